"""`kambda operator`: run the Kopf operator with the current kubeconfig, or in-cluster."""

from __future__ import annotations

import asyncio
import dataclasses

import kopf
from kubernetes_asyncio import client

from kambda import kubeconfig

from . import handlers, resources
from .cluster import Cluster

__all__ = ["handlers", "run"]  # importing handlers registers them with Kopf


async def _with_gateway_service(
    api: client.ApiClient, settings: resources.Settings, service: str
) -> resources.Settings:
    """The gateway's addresses from its Service (`namespace/name`): its ClusterIP, the `grpc` and `http` ports."""
    namespace, _, name = service.partition("/")
    svc = await client.CoreV1Api(api).read_namespaced_service(name, namespace)
    ports = {p.name: int(p.port) for p in svc.spec.ports or [] if p.name}
    address, store = resources.gateway_endpoints(svc.spec.cluster_ip or "", ports)
    return dataclasses.replace(settings, gateway_address=address, code_store=store)


def run(
    *,
    namespace: str | None,
    settings: resources.Settings,
    liveness: str | None = None,
    gateway_service: str | None = None,
) -> int:
    async def main() -> None:
        await kubeconfig.load()
        async with client.ApiClient() as api:
            effective = settings
            if gateway_service:
                effective = await _with_gateway_service(api, settings, gateway_service)
            memo = kopf.Memo(cluster=Cluster(api), settings=effective)
            await kopf.operator(
                clusterwide=namespace is None,
                namespaces=[namespace] if namespace else (),
                memo=memo,
                standalone=True,
                liveness_endpoint=liveness,
            )

    asyncio.run(main())
    return 0
