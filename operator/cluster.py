"""The operator's few writes to the API server (kubernetes_asyncio), kept in one place so handlers stay thin.

Objects are created if absent and otherwise left alone, except the ones whose content follows the spec
(credential Secret, NetworkPolicy), which are replaced. A version's Deployment is never updated: in particular its
`replicas` belong to the gateway from the moment it exists.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from kambda import naming
from kambda.naming import ALIASES, FUNCTIONS, GROUP, VERSION

from . import resources

APPLIED_HASH = "kambda.dev/applied-hash"


class Cluster:
    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.net = client.NetworkingV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    async def ensure(self, obj: Mapping[str, Any], *, replace: bool = False) -> None:
        namespace = obj["metadata"]["namespace"]
        name = obj["metadata"]["name"]
        create, read, update = self._verbs(obj["kind"])
        # The hash of what we wrote rides along, so an unchanged object is never rewritten (a rewrite bumps its
        # resourceVersion and wakes every watcher for nothing).
        digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
        annotations = {**obj["metadata"].get("annotations", {}), APPLIED_HASH: digest}
        body = {**obj, "metadata": {**obj["metadata"], "annotations": annotations}}
        try:
            await create(namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            if replace:
                current = await read(name, namespace)
                if (current.metadata.annotations or {}).get(APPLIED_HASH) == digest:
                    return
                body["metadata"]["resourceVersion"] = current.metadata.resource_version
                await update(name, namespace, body)

    async def ensure_pool(
        self, namespace: str, runtime: str, size: int, function_owner: Mapping[str, Any], settings: resources.Settings
    ) -> None:
        """The namespace's warm pool for `runtime` at `size`, with this Function among its owners: the pool is
        garbage-collected with the last Function that uses it. Its credential and NetworkPolicy go with it."""
        deployment = resources.pool_deployment(namespace, runtime, size, settings)
        name = deployment["metadata"]["name"]
        # Not the controller (a Deployment has none), and not blocking: a Function's deletion never waits for a pool.
        ref = {**function_owner, "controller": False, "blockOwnerDeletion": False}
        deployment["metadata"]["ownerReferences"] = [ref]
        pool = None
        if size > 0:
            try:
                pool = await self.apps.create_namespaced_deployment(namespace, deployment)  # type: ignore[arg-type]
            except ApiException as exc:
                if exc.status != 409:
                    raise
        if pool is None:
            # There already (or to be scaled to zero if it is): a strategic merge adds this owner to the others
            # (ownerReferences merge by uid) and brings the size and the pod template up to date (a new runtime
            # image replaces the waiting pods; specialised ones are no longer the pool's).
            try:
                pool = await self.apps.patch_namespaced_deployment(
                    name, namespace, {"metadata": {"ownerReferences": [ref]}, "spec": deployment["spec"]},
                    _content_type="application/strategic-merge-patch+json",  # type: ignore[call-arg]
                )  # fmt: skip
            except ApiException as exc:
                if exc.status == 404 and size == 0:
                    return  # no pool, and none wanted
                raise
        pool_owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": pool.metadata.uid,
                      "controller": True, "blockOwnerDeletion": False}  # fmt: skip
        for obj in (
            resources.pool_credential_secret(namespace, runtime, settings),
            resources.pool_network_policy(namespace, runtime, settings),
        ):
            await self.ensure(resources.pool_owned(obj, pool_owner), replace=True)

    async def namespace_labels(self, namespace: str) -> dict[str, str]:
        ns = await self.core.read_namespace(namespace)
        return dict(ns.metadata.labels or {})

    def _verbs(self, kind: str) -> tuple[Any, Any, Any]:
        c, a, n = self.core, self.apps, self.net
        return {
            "Secret": (c.create_namespaced_secret, c.read_namespaced_secret, c.replace_namespaced_secret),
            "ConfigMap": (c.create_namespaced_config_map, c.read_namespaced_config_map, None),
            "Deployment": (a.create_namespaced_deployment, a.read_namespaced_deployment, None),
            "ControllerRevision": (
                a.create_namespaced_controller_revision, a.read_namespaced_controller_revision, None,
            ),
            "NetworkPolicy": (
                n.create_namespaced_network_policy, n.read_namespaced_network_policy,
                n.replace_namespaced_network_policy,
            ),
        }[kind]  # fmt: skip

    async def revisions(self, namespace: str, function: str, uid: str) -> list[Any]:
        """The versions of the Function `uid`: by owner, since one deleted and made again under the same name may
        still have revisions of the old one (garbage collection runs in the background)."""
        result = await self.apps.list_namespaced_controller_revision(
            namespace, label_selector=f"{naming.FUNCTION_LABEL}={function}"
        )
        return [r for r in result.items if any(o.uid == uid for o in r.metadata.owner_references or [])]

    async def delete_version(self, namespace: str, function: str, version: int) -> None:
        name = f"{function}-v{version}"
        for delete, object_name in (
            (self.apps.delete_namespaced_deployment, name),
            (self.core.delete_namespaced_config_map, f"{name}-code"),
            (self.apps.delete_namespaced_controller_revision, name),
        ):
            try:
                await delete(object_name, namespace, propagation_policy="Background")
            except ApiException as exc:
                if exc.status != 404:
                    raise

    async def aliases(self, namespace: str) -> list[dict[str, Any]]:
        result = await self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, ALIASES)
        return list(result["items"])

    async def get_function(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            body: dict[str, Any] = await self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, FUNCTIONS, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return body

    async def patch_function_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        await self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, FUNCTIONS, name, {"status": dict(status)},
            _content_type="application/merge-patch+json",  # type: ignore[call-arg]  # else a JSON Patch is sent
        )  # fmt: skip

    async def ready_replicas(self, namespace: str, function: str) -> int:
        result = await self.apps.list_namespaced_deployment(namespace, label_selector=f"kambda.dev/function={function}")
        return sum((d.status.ready_replicas or 0) for d in result.items)
