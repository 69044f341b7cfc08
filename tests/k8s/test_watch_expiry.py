"""The gateway's watch against a real API server: resumed from its last resourceVersion, listed again only on 410
Gone, and a Function deleted while the watch had expired is gone from the registry after the relist."""

from __future__ import annotations

import asyncio
import json

from kubernetes_asyncio import client, config

from kambda.gateway.registry import Registry
from kambda.gateway.watching import Watcher
from tests.kube import Kube


def manifest(name: str) -> str:
    return json.dumps({
        "apiVersion": "kambda.dev/v1alpha1", "kind": "Function", "metadata": {"name": name},
        "spec": {"runtime": "python3.11", "handler": "app.handler",
                 "code": {"files": {"app.py": "def handler(e, c):\n    return e\n"}}},
    })  # fmt: skip


async def until(predicate: object, timeout: float = 30) -> bool:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.05)
    return True


async def test_a_function_deleted_during_a_watch_expiry_leaves_the_registry(kube: Kube, namespace: str) -> None:
    await config.load_kube_config(config_file=kube.kubeconfig)
    async with client.ApiClient() as api:
        registry = Registry(namespace)
        watcher = Watcher(api, registry, namespace)
        for name in ("keep", "gone"):
            assert kube.apply(manifest(name), namespace).returncode == 0
        task = asyncio.create_task(watcher.run())
        try:
            await until(lambda: registry.get_function("gone") is not None)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            # The gap: a deletion nobody watches, and a resume version the API server no longer has (as after a
            # compaction), so the next watch gets 410 Gone and has to list again.
            kube.kubectl("delete", "function", "gone", "-n", namespace)
            expired = kube.kubectl("get", "--raw", f"/apis/kambda.dev/v1alpha1/namespaces/{namespace}/functions"
                                   "?watch=1&resourceVersion=1&timeoutSeconds=2", check=False)  # fmt: skip
            assert '"code":410' in expired.stdout.replace(" ", ""), expired.stdout  # so the deletion is not replayed
            watcher.rewind("1")
            task = asyncio.create_task(watcher.run())
            await until(lambda: registry.get_function("gone") is None)
            assert registry.get_function("keep") is not None
            # Resumed, not relisted: a new Function arrives as a watch event.
            assert kube.apply(manifest("later"), namespace).returncode == 0
            await until(lambda: registry.get_function("later") is not None)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
