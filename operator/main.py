"""`kambda operator`: run the Kopf operator with the current kubeconfig, or in-cluster."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import kopf
from kubernetes_asyncio import client, config

from . import handlers, resources
from .cluster import Cluster

__all__ = ["handlers", "run"]  # importing handlers registers them with Kopf


def signing_key(path: str | None) -> bytes:
    """The gateway's and operator's shared key for runtime credentials (a Secret mounted in both)."""
    if path:
        return Path(path).read_bytes().strip()
    value = os.environ.get("KAMBDA_SIGNING_KEY")
    if not value:
        raise SystemExit("kambda operator: set KAMBDA_SIGNING_KEY or --signing-key-file")
    return value.encode()


async def _load_kubernetes_config() -> None:
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    else:
        await config.load_kube_config()


def run(*, namespace: str | None, settings: resources.Settings, liveness: str | None = None) -> int:
    async def main() -> None:
        await _load_kubernetes_config()
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
