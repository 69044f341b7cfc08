"""Access keys on Kubernetes: the Secrets labelled `kambda.dev/access-key` in the platform's namespace, listed and
then watched, so a key made or removed with `kambda keys` (or kubectl) counts at once on every gateway replica.

Why Secrets rather than a file mounted from one: a mounted Secret reaches a pod only at the kubelet's next sync
(a minute or more), and a key made for a new CI job should work on its first request. The watch resumes from its
last resourceVersion and relists only when the API server says the version is gone (410).
"""

from __future__ import annotations

import asyncio
import base64
import logging

from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from kambda import accesskeys

log = logging.getLogger(__name__)
WATCH_SECONDS = 300


def _decoded(data: dict[str, str] | None) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (data or {}).items()}


class SecretKeys:
    """A `KeySource` for the authenticator: the access keys the Secrets hold, as of the last watch event."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self._core = client.CoreV1Api(api)
        self._namespace = namespace
        self._keys: dict[str, accesskeys.AccessKey] = {}  # access key id -> key
        self._by_secret: dict[str, str] = {}  # Secret name -> access key id
        self.synced = asyncio.Event()

    def get(self, access_key_id: str) -> accesskeys.AccessKey | None:
        return self._keys.get(access_key_id)

    def count(self) -> int:
        return len(self._keys)

    def _put(self, name: str, data: dict[str, str] | None) -> None:
        self._drop(name)
        try:
            key = accesskeys.from_secret(_decoded(data))
        except (accesskeys.KeyStoreError, ValueError) as exc:
            log.warning("Secret %s/%s is labelled as an access key but is not one: %s", self._namespace, name, exc)
            return
        self._keys[key.access_key_id] = key
        self._by_secret[name] = key.access_key_id

    def _drop(self, name: str) -> None:
        old = self._by_secret.pop(name, None)
        if old is not None:
            self._keys.pop(old, None)

    async def run(self) -> None:
        version: str | None = None
        lister = self._core.list_namespaced_secret
        while True:
            try:
                if version is None:
                    listing = await lister(self._namespace, label_selector=accesskeys.SECRET_LABEL)
                    self._keys, self._by_secret = {}, {}
                    for secret in listing.items:
                        self._put(secret.metadata.name, secret.data)
                    version = listing.metadata.resource_version
                    self.synced.set()
                async with watch.Watch() as w:
                    async for event in w.stream(
                        lister, self._namespace, label_selector=accesskeys.SECRET_LABEL,
                        resource_version=version, timeout_seconds=WATCH_SECONDS,
                    ):  # fmt: skip
                        secret = event["object"]
                        version = secret.metadata.resource_version
                        if event["type"] == "DELETED":
                            self._drop(secret.metadata.name)
                        else:
                            self._put(secret.metadata.name, secret.data)
            except asyncio.CancelledError:
                raise
            except ApiException as exc:
                if exc.status == 410:
                    version = None  # too old: list again
                else:
                    log.warning("watching access-key Secrets failed (%s); retrying", exc.status)
                    await asyncio.sleep(1)
            except Exception:
                log.exception("watching access-key Secrets failed; retrying")
                await asyncio.sleep(1)
