"""`kambda operator`: run the Kopf operator with the current kubeconfig, or in-cluster."""

from __future__ import annotations

import asyncio

import kopf
from kubernetes_asyncio import client

from kambda import kubeconfig

from . import handlers, resources
from .cluster import Cluster

__all__ = ["handlers", "run"]  # importing handlers registers them with Kopf


def run(*, namespace: str | None, settings: resources.Settings, liveness: str | None = None) -> int:
    async def main() -> None:
        await kubeconfig.load()
        async with client.ApiClient() as api:
            memo = kopf.Memo(cluster=Cluster(api), settings=settings)
            await kopf.operator(
                clusterwide=namespace is None,
                namespaces=[namespace] if namespace else (),
                memo=memo,
                standalone=True,
                liveness_endpoint=liveness,
            )

    asyncio.run(main())
    return 0
