"""The control plane's store on Kubernetes: the Function and Alias custom resources themselves, so that what
`kubectl get fn` shows is what the Lambda API returns, and the other way round.

- **Writes** replace the object at the resourceVersion they read (optimistic concurrency); a change made by someone
  else in between (kubectl, another gateway) is a 409 from the API server, and the change is applied again to the
  new object, a few times, before the caller gets ResourceConflictException.
- **Versions** are the operator's ControllerRevisions (`{name}-v{N}`); PublishVersion waits until the operator has
  published what the spec now is. A version is deleted by asking the operator (an annotation on the Function):
  it owns versions and their Deployments.
- **RevisionId** is derived from the object's uid and `metadata.generation`, which only a change of the spec moves
  (status updates do not), so a RevisionId stays valid while the operator reports on the function.
- **State** follows the operator's status and this gateway's registry: `Active` once the newest version is
  reconciled and this gateway can route to it, so that an invoke after `function_active_v2` is served.
- **Aliases** made through the API are named `{function}.{alias}` and carry the alias's name in `spec.name`, so
  that two functions can each have an alias `live` in one namespace.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from kambda import naming, specs
from kambda.naming import ALIASES, FUNCTIONS, GROUP, VERSION
from kambda.operator import versioning

from .. import errors
from ..registry import Registry
from . import shapes
from .store import (
    Change,
    StoredAlias,
    StoredFunction,
    StoredVersion,
    check_alias,
    check_version_deletable,
    conflict,
    revision_mismatch,
)  # fmt: skip

WRITE_ATTEMPTS = 5
PUBLISH_TIMEOUT = 60.0  # how long PublishVersion waits for the operator


def _when(text: str | None) -> str:
    if not text:
        return ""
    return shapes.timestamp(datetime.fromisoformat(text.replace("Z", "+00:00")))


def alias_object_name(function: str, alias: str) -> str:
    """The Alias object the Lambda API makes: `{function}.{alias}`, or, for an alias name Kubernetes does not take
    as is (capitals, underscores), a lower-cased one made unique by a digest of the real name (kept in spec.name)."""
    if specs.K8S_NAME_RE.fullmatch(alias):
        return f"{function}.{alias}"
    readable = re.sub(r"[^a-z0-9-]+", "-", alias.lower()).strip("-") or "alias"
    return f"{function}.{readable[:40]}-{hashlib.sha256(alias.encode()).hexdigest()[:10]}"


def status_of(obj: Mapping[str, Any], *, routable: bool, served: bool) -> shapes.Status:
    """Lambda's State and LastUpdateStatus from a Function's status (pure). `routable`: this gateway can route to
    some version of it; `served`: to its newest version.

    A failure counts for the generation it was found in only: a fix (a newer generation) is in progress until the
    operator has judged it."""
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    generation = meta.get("generation")
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    has_version = bool(status.get("latestVersion"))
    if (
        ready is not None and ready.get("status") == "False" and ready.get("reason") in naming.FAILED_REASONS
        and ready.get("observedGeneration", generation) == generation
    ):  # fmt: skip
        reason, code = ready.get("message") or ready.get("reason"), ready.get("reason")
        if has_version and routable:  # an update failed: the function still runs what it ran
            return shapes.Status("Active", last_update="Failed", last_update_reason=reason, last_update_code=code)
        return shapes.Status("Failed", reason, code, "Failed", reason, code)
    if not (has_version and routable):
        return shapes.Status("Pending", "The function is being created.", "Creating", "InProgress")
    if status.get("observedGeneration") == generation and served:
        return shapes.Status()
    return shapes.Status(last_update="InProgress", last_update_reason="The function is being updated.",
                         last_update_code="Updating")  # fmt: skip


class KubernetesFunctionStore:
    def __init__(
        self, api: client.ApiClient, namespace: str, registry: Registry, place: shapes.Place,
        *, clock: Callable[[], float] = time.monotonic, publish_timeout: float = PUBLISH_TIMEOUT,
    ) -> None:  # fmt: skip
        self._custom = client.CustomObjectsApi(api)
        self._apps = client.AppsV1Api(api)
        self._namespace = namespace
        self._registry = registry
        self._place = place
        self._clock = clock
        self._publish_timeout = publish_timeout

    # ---- reading ---------------------------------------------------------------------------------------------

    async def _object(self, plural: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = await self._custom.get_namespaced_custom_object(
                GROUP, VERSION, self._namespace, plural, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    async def _revisions(self, function: str | None = None) -> dict[str, list[Any]]:
        """ControllerRevisions by the uid of the Function that owns them: a function deleted and made again under
        the same name has revisions of its own, whatever of the old one garbage collection has not removed yet."""
        label = naming.FUNCTION_LABEL
        selector = f"{label}={function}" if function else label
        listing = await self._apps.list_namespaced_controller_revision(self._namespace, label_selector=selector)
        by_owner: dict[str, list[Any]] = {}
        for revision in listing.items:
            for owner in revision.metadata.owner_references or []:
                by_owner.setdefault(owner.uid, []).append(revision)
        return by_owner

    def _stored(self, obj: Mapping[str, Any], revisions: list[Any]) -> StoredFunction:
        meta, spec = obj["metadata"], dict(obj.get("spec") or {})
        name, uid = meta["name"], meta.get("uid", meta["name"])
        listed = {str(v.get("version")) for v in (obj.get("status") or {}).get("versions") or []}
        versions = []
        for revision in sorted(revisions, key=lambda r: int(r.revision)):
            number = str(revision.revision)
            if listed and number not in listed:
                continue  # deleted, or not yet reported by the operator
            snapshot = dict((revision.data or {}).get("spec") or {})
            created = revision.metadata.creation_timestamp
            versions.append(StoredVersion(
                number, specs.version_spec(spec, snapshot), shapes.timestamp(created) if created else "",
                shapes.revision_id(uid, f"v{number}"),
            ))  # fmt: skip
        latest = (obj.get("status") or {}).get("latestVersion")
        served = bool(latest) and self._registry.by_key(f"{self._namespace}/{name}", str(latest)) is not None
        routable = bool(self._registry.get_function(name))
        modified = (meta.get("annotations") or {}).get(naming.LAST_MODIFIED_ANNOTATION) or _when(
            meta.get("creationTimestamp")
        )
        return StoredFunction(
            name, spec, shapes.revision_id(uid, meta.get("generation", 1)), modified, tuple(versions),
            status_of(obj, routable=routable, served=served),
        )  # fmt: skip

    async def functions(self) -> list[StoredFunction]:
        listing = await self._custom.list_namespaced_custom_object(GROUP, VERSION, self._namespace, FUNCTIONS)
        revisions = await self._revisions()
        items = sorted(listing["items"], key=lambda o: o["metadata"]["name"])
        return [self._stored(obj, revisions.get(obj["metadata"].get("uid", ""), [])) for obj in items]

    async def function(self, name: str) -> StoredFunction:
        obj = await self._existing(name)
        return self._stored(obj, (await self._revisions(name)).get(obj["metadata"].get("uid", ""), []))

    async def _existing(self, name: str) -> dict[str, Any]:
        obj = await self._object(FUNCTIONS, name) if specs.K8S_NAME_RE.fullmatch(name) else None
        if obj is None:
            raise errors.not_found(self._place.function_arn(name))
        return obj

    # ---- writing ---------------------------------------------------------------------------------------------

    def _refused(self, exc: ApiException) -> errors.AWSError:
        """The API server's refusal in Lambda's words: its schema's 422 is the caller's bad parameter."""
        try:
            message = json.loads(exc.body or "{}").get("message", exc.reason)
        except (TypeError, ValueError):
            message = exc.reason
        if exc.status == 422:
            return errors.invalid_parameter(str(message))
        if exc.status == 403:
            return errors.service_error(f"the gateway may not write Functions here: {message}")
        return errors.service_error(f"the API server refused the change ({exc.status}): {message}")

    async def create(self, name: str, spec: Mapping[str, Any]) -> StoredFunction:
        meta = {"name": name, "annotations": {naming.LAST_MODIFIED_ANNOTATION: shapes.now()}}
        body = {"apiVersion": naming.API_VERSION, "kind": "Function", "metadata": meta, "spec": dict(spec)}
        try:
            obj = await self._custom.create_namespaced_custom_object(GROUP, VERSION, self._namespace, FUNCTIONS, body)
        except ApiException as exc:
            if exc.status == 409:
                raise conflict(f"Function already exist: {name}") from None
            raise self._refused(exc) from None
        return self._stored(obj, [])

    async def update(self, name: str, change: Change, *, revision: str | None = None) -> StoredFunction:
        for _ in range(WRITE_ATTEMPTS):
            obj = await self._existing(name)
            current = self._stored(obj, [])
            if revision is not None and revision != current.revision:
                raise revision_mismatch()
            new_spec = dict(change(current.spec))
            if new_spec == current.spec:
                return await self.function(name)  # nothing to change: the generation (and RevisionId) stays
            meta = obj["metadata"]
            annotations = {**(meta.get("annotations") or {}), naming.LAST_MODIFIED_ANNOTATION: shapes.now()}
            body = {**obj, "metadata": {**meta, "annotations": annotations}, "spec": new_spec}
            try:
                await self._custom.replace_namespaced_custom_object(
                    GROUP, VERSION, self._namespace, FUNCTIONS, name, body
                )
            except ApiException as exc:
                if exc.status == 409:
                    continue  # changed since we read it: apply the change to what it is now
                if exc.status == 404:
                    raise errors.not_found(self._place.function_arn(name)) from None
                raise self._refused(exc) from None
            return await self.function(name)
        raise conflict("The operation cannot be performed at this time. The function is being changed concurrently.")

    async def published(self, name: str) -> StoredFunction:
        """Wait (bounded) until the operator has published the spec as it is now and this gateway serves it."""
        deadline = self._clock() + self._publish_timeout
        delay = 0.05
        while True:
            fn = await self.function(name)
            if fn.status.last_update == "Failed":
                raise conflict(f"The function's last update failed: {fn.status.last_update_reason}")
            if fn.status.last_update == "Successful" and fn.newest is not None:
                return fn
            if self._clock() >= deadline:
                raise errors.AWSError(
                    503, "ServiceException", f"The operator did not publish {name} within {self._publish_timeout:g} s",
                    headers={"Retry-After": "5"},
                )  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def delete(self, name: str) -> None:
        await self._existing(name)
        for alias in await self._alias_objects(name):
            await self._delete_object(ALIASES, alias["metadata"]["name"])
        if not await self._delete_object(FUNCTIONS, name):
            raise errors.not_found(self._place.function_arn(name))

    async def _delete_object(self, plural: str, name: str) -> bool:
        try:
            await self._custom.delete_namespaced_custom_object(GROUP, VERSION, self._namespace, plural, name)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise self._refused(exc) from None
        return True

    async def delete_version(self, name: str, version: str) -> None:
        fn = await self.function(name)
        check_version_deletable(self._place.function_arn(name, version), fn, await self.aliases(name), version)
        for _ in range(WRITE_ATTEMPTS):
            obj = await self._existing(name)
            meta = obj["metadata"]
            annotations = meta.get("annotations") or {}
            asked = set(versioning.requested_deletions(annotations.get(naming.DELETE_VERSIONS_ANNOTATION))) | {
                int(version)
            }
            patch = {"metadata": {"resourceVersion": meta["resourceVersion"], "annotations": {
                naming.DELETE_VERSIONS_ANNOTATION: ",".join(map(str, sorted(asked)))}}}  # fmt: skip
            try:
                await self._custom.patch_namespaced_custom_object(
                    GROUP, VERSION, self._namespace, FUNCTIONS, name, patch,
                    _content_type="application/merge-patch+json",  # type: ignore[call-arg]  # else a JSON Patch
                )  # fmt: skip
                break
            except ApiException as exc:
                if exc.status == 409:
                    continue  # changed since read: ask again on top of what it is now
                if exc.status == 404:
                    raise errors.not_found(self._place.function_arn(name)) from None
                raise self._refused(exc) from None
        else:
            raise conflict(
                "The operation cannot be performed at this time. The function is being changed concurrently."
            )
        deadline = self._clock() + self._publish_timeout
        while (await self.function(name)).version(version) is not None:
            if self._clock() >= deadline:
                raise errors.AWSError(
                    503, "ServiceException", f"The operator did not delete version {version} of {name} within "
                    f"{self._publish_timeout:g} s; it will", headers={"Retry-After": "5"},
                )  # fmt: skip
            await asyncio.sleep(0.2)

    # ---- aliases ---------------------------------------------------------------------------------------------

    async def _alias_objects(self, function: str) -> list[dict[str, Any]]:
        listing = await self._custom.list_namespaced_custom_object(GROUP, VERSION, self._namespace, ALIASES)
        return [a for a in listing["items"] if (a.get("spec") or {}).get("function") == function]

    def _alias(self, obj: Mapping[str, Any]) -> StoredAlias:
        meta, spec = obj["metadata"], obj.get("spec") or {}
        name = spec.get("name") or meta["name"]
        weights = {str(k): float(v) for k, v in (spec.get("additionalVersionWeights") or {}).items()}
        revision = shapes.revision_id(meta.get("uid", meta["name"]), meta.get("generation", 1))
        return StoredAlias(spec["function"], name, str(spec.get("version", "")), weights,
                           spec.get("description", ""), revision)  # fmt: skip

    async def aliases(self, function: str) -> list[StoredAlias]:
        await self._existing(function)
        return sorted((self._alias(o) for o in await self._alias_objects(function)), key=lambda a: a.name)

    async def put_alias(self, alias: StoredAlias, *, create: bool, revision: str | None = None) -> StoredAlias:
        fn = await self.function(alias.function)
        found = next((o for o in await self._alias_objects(alias.function) if self._alias(o).name == alias.name), None)
        arn = self._place.function_arn(alias.function, alias.name)
        if create and found is not None:
            raise conflict(f"Alias already exists: {arn}")
        if not create and found is None:
            raise errors.resource_not_found(f"Alias not found: {arn}")
        if found is not None and revision is not None and revision != self._alias(found).revision:
            raise revision_mismatch()
        check_alias(alias, [v.number for v in fn.versions])
        spec: dict[str, Any] = {"function": alias.function, "version": alias.version, "name": alias.name}
        if alias.description:
            spec["description"] = alias.description
        if alias.weights:
            spec["additionalVersionWeights"] = dict(alias.weights)
        try:
            if found is None:
                object_name = alias_object_name(alias.function, alias.name)
                body = {"apiVersion": naming.API_VERSION, "kind": "Alias", "metadata": {"name": object_name},
                        "spec": spec}  # fmt: skip
                obj = await self._custom.create_namespaced_custom_object(GROUP, VERSION, self._namespace, ALIASES, body)
            else:
                body = {**found, "spec": spec}
                obj = await self._custom.replace_namespaced_custom_object(
                    GROUP, VERSION, self._namespace, ALIASES, found["metadata"]["name"], body
                )
        except ApiException as exc:
            if exc.status == 409:
                raise conflict(f"Alias {arn} was changed at the same time; read it again") from None
            raise self._refused(exc) from None
        await self._until_routed(alias)
        return self._alias(obj)

    async def _until_routed(self, alias: StoredAlias) -> None:
        """Until this gateway routes the alias as written (bounded): an invoke right after CreateAlias works."""
        deadline = self._clock() + self._publish_timeout
        want = versioning.alias_routing(alias.version, alias.weights)
        while self._registry.routing(self._namespace, alias.function, alias.name) != want:
            if self._clock() >= deadline:
                return
            await asyncio.sleep(0.05)

    async def delete_alias(self, function: str, name: str) -> None:
        found = next((o for o in await self._alias_objects(function) if self._alias(o).name == name), None)
        if found is None or not await self._delete_object(ALIASES, found["metadata"]["name"]):
            raise errors.resource_not_found(f"Alias not found: {self._place.function_arn(function, name)}")
