"""`kambda keys --kubernetes NAMESPACE`: access keys as Secrets labelled `kambda.dev/access-key` in the platform's
namespace, made and removed with the user's own kubeconfig (so RBAC decides who may), and picked up by every
gateway's watch at once (gateway/kubekeys.py)."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Mapping
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from . import accesskeys, kubeconfig

_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")


def secret_name(access_key_id: str) -> str:
    return f"kambda-key-{access_key_id.lower()}"


def secret_manifest(key: accesskeys.AccessKey) -> dict[str, Any]:
    label = key.name if _LABEL_VALUE.fullmatch(key.name) else "key"
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": secret_name(key.access_key_id), "labels": {accesskeys.SECRET_LABEL: label}},
        "stringData": accesskeys.secret_data(key),
    }  # fmt: skip


class SecretKeyStore:
    """The same three operations as `accesskeys.KeyFile`, against the cluster (blocking: a CLI's)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    async def _call(self, op: str, *args: Any) -> Any:
        await kubeconfig.load()
        async with client.ApiClient() as api:
            core = client.CoreV1Api(api)
            try:
                if op == "list_namespaced_secret":
                    return await core.list_namespaced_secret(args[0], label_selector=args[1])
                return await getattr(core, op)(*args)
            except ApiException as exc:
                if exc.status == 404 and op == "delete_namespaced_secret":
                    raise accesskeys.KeyStoreError(f"no access key {args[0]} in namespace {self.namespace}") from None
                raise accesskeys.KeyStoreError(f"the API server refused ({exc.status}): {exc.reason}") from None

    def keys(self) -> dict[str, accesskeys.AccessKey]:
        listing = asyncio.run(self._call("list_namespaced_secret", self.namespace, accesskeys.SECRET_LABEL))
        found = {}
        for secret in listing.items:
            try:
                key = accesskeys.from_secret(_decoded(secret.data))
            except accesskeys.KeyStoreError:
                continue
            found[key.access_key_id] = key
        return found

    def create(self, name: str, policies: tuple[Mapping[str, Any], ...]) -> accesskeys.AccessKey:
        key = accesskeys.new_key(name, policies)
        asyncio.run(self._call("create_namespaced_secret", self.namespace, secret_manifest(key)))
        return key

    def remove(self, access_key_id: str) -> None:
        asyncio.run(self._call("delete_namespaced_secret", secret_name(access_key_id), self.namespace))


def _decoded(data: Mapping[str, str] | None) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (data or {}).items()}
