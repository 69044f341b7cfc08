"""`kambda keys --kubernetes NAMESPACE`: the access keys of the platform installed in NAMESPACE, entries of its
access-keys Secret (found by its label `kambda.dev/access-keys`), changed with the user's own kubeconfig (so RBAC
decides who may) and picked up by every gateway's watch at once (gateway/kubekeys.py)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from . import accesskeys, kubeconfig


class SecretKeyStore:
    """The same three operations as `accesskeys.KeyFile`, against the cluster (blocking: a CLI's)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    async def _secret(self, core: client.CoreV1Api) -> Any:
        listing = await core.list_namespaced_secret(self.namespace, label_selector=accesskeys.SECRET_LABEL)
        if len(listing.items) != 1:
            raise accesskeys.KeyStoreError(
                f"expected one Secret labelled {accesskeys.SECRET_LABEL} in namespace {self.namespace} (the "
                f"platform's, made by its chart), found {len(listing.items)}"
            )
        return listing.items[0]

    async def _run(self, change: dict[str, str | None] | None) -> dict[str, accesskeys.AccessKey]:
        """The keys, after `change` (entry -> base64 value, None removes it) was merged into the Secret."""
        await kubeconfig.load()
        async with client.ApiClient() as api:
            core = client.CoreV1Api(api)
            try:
                secret = await self._secret(core)
                if change:
                    secret = await core.patch_namespaced_secret(secret.metadata.name, self.namespace, {"data": change})
            except ApiException as exc:
                raise accesskeys.KeyStoreError(f"the API server refused ({exc.status}): {exc.reason}") from None
        return accesskeys.from_secret(secret.data)

    def keys(self) -> dict[str, accesskeys.AccessKey]:
        return asyncio.run(self._run(None))

    def create(self, name: str, policies: tuple[Mapping[str, Any], ...]) -> accesskeys.AccessKey:
        key = accesskeys.new_key(name, policies)
        value = base64.b64encode(accesskeys.secret_entry(key).encode()).decode()
        asyncio.run(self._run({key.access_key_id: value}))
        return key

    def remove(self, access_key_id: str) -> None:
        if access_key_id not in self.keys():
            raise accesskeys.KeyStoreError(f"no access key {access_key_id} in namespace {self.namespace}")
        asyncio.run(self._run({access_key_id: None}))
