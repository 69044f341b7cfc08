"""Connecting to Kubernetes the same way everywhere: in a pod, its service account; elsewhere, the kubeconfig."""

from __future__ import annotations

import os

from kubernetes_asyncio import config


async def load() -> None:
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    else:
        await config.load_kube_config()


def signing_key(path: str | None) -> bytes:
    """The key the gateway and the operator share for runtime credentials (a Secret mounted in both)."""
    if path:
        with open(path, "rb") as f:
            return f.read().strip()
    value = os.environ.get("KAMBDA_SIGNING_KEY")
    if not value:
        raise SystemExit(
            "kambda: set KAMBDA_SIGNING_KEY or --signing-key-file (the key shared by gateway and operator)"
        )
    return value.encode()
