"""Access keys on Kubernetes: the entries of one Secret (`--keys-secret NAMESPACE/NAME`, the chart's
`<release>-access-keys`), watched, so a key made or removed with `kambda keys --kubernetes` counts at once on every
gateway replica.

Why one Secret, watched by name: RBAC can then name exactly it (`resourceNames`, which list and watch honour with a
`metadata.name` field selector), and the gateway reads no other Secret of its namespace (function credentials,
Helm's release data). Why a watch rather than the Secret mounted as a file: a mounted Secret reaches a pod only at
the kubelet's next sync, a minute or more, and a key made for a new CI job should work on its first request.
"""

from __future__ import annotations

import asyncio
import logging

from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from kambda import accesskeys

log = logging.getLogger(__name__)
WATCH_SECONDS = 300


class SecretKeys:
    """A `KeySource` for the authenticator: the keys the Secret holds, as of the last watch event."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str) -> None:
        self._core = client.CoreV1Api(api)
        self._namespace = namespace
        self._name = name
        self._keys: dict[str, accesskeys.AccessKey] = {}
        self.synced = asyncio.Event()

    @property
    def where(self) -> str:
        return f"Secret {self._namespace}/{self._name}"

    def get(self, access_key_id: str) -> accesskeys.AccessKey | None:
        return self._keys.get(access_key_id)

    def count(self) -> int:
        return len(self._keys)

    async def run(self) -> None:
        version: str | None = None
        lister = self._core.list_namespaced_secret
        selector = f"metadata.name={self._name}"
        while True:
            try:
                if version is None:
                    listing = await lister(self._namespace, field_selector=selector)
                    self._keys = accesskeys.from_secret(listing.items[0].data) if listing.items else {}
                    version = listing.metadata.resource_version
                    self.synced.set()
                async with watch.Watch() as w:
                    async for event in w.stream(
                        lister, self._namespace, field_selector=selector, resource_version=version,
                        timeout_seconds=WATCH_SECONDS,
                    ):  # fmt: skip
                        secret = event["object"]
                        version = secret.metadata.resource_version
                        deleted = event["type"] == "DELETED"
                        self._keys = {} if deleted else accesskeys.from_secret(secret.data)
            except asyncio.CancelledError:
                raise
            except ApiException as exc:
                if exc.status == 410:
                    version = None  # too old: list again
                else:
                    log.warning("watching %s failed (%s); retrying", self.where, exc.status)
                    await asyncio.sleep(1)
            except Exception:
                log.exception("watching %s failed; retrying", self.where)
                await asyncio.sleep(1)
