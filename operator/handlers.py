"""Kopf handlers: parse, build (resources.py), apply (cluster.py), report status. Nothing else lives here.

Every handler is idempotent: on operator restart (`resume`) it recomputes the same objects and the same version
number, so nothing changes unless the spec did.
"""

from __future__ import annotations

import datetime
from typing import Any, cast

import kopf

from kambda import naming
from kambda.naming import ALIASES, API_VERSION, FUNCTIONS, GROUP, VERSION
from kambda.specs import SpecError, parse_function

from . import resources, versioning
from .cluster import Cluster


def _condition(ready: bool, reason: str, message: str, generation: int | None) -> list[dict[str, Any]]:
    """The Ready condition, with the generation it is about: a failure of generation 3 says nothing of 4 (the
    Lambda API reports 4 as in progress until the operator has judged it)."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return [
        {"type": "Ready", "status": "True" if ready else "False", "reason": reason, "message": message,
         "lastTransitionTime": now, "observedGeneration": generation}
    ]  # fmt: skip


def _not_ready(patch: kopf.Patch, body: kopf.Body, reason: str, message: str) -> None:
    patch.status["conditions"] = _condition(False, reason, message, body.get("metadata", {}).get("generation"))
    kopf.warn(body, reason=reason, message=message)


@kopf.on.resume(GROUP, VERSION, FUNCTIONS)
@kopf.on.create(GROUP, VERSION, FUNCTIONS)
@kopf.on.update(GROUP, VERSION, FUNCTIONS)
async def reconcile_function(
    *,
    body: kopf.Body,
    spec: kopf.Spec,
    name: str,
    namespace: str | None,
    meta: kopf.Meta,
    patch: kopf.Patch,
    memo: Any,
    **_: Any,
) -> None:
    cluster: Cluster = memo.cluster
    settings: resources.Settings = memo.settings
    assert namespace is not None  # Functions are namespaced
    raw_spec = dict(spec)
    manifest = {"apiVersion": API_VERSION, "kind": "Function",
                "metadata": {"name": name, "namespace": namespace}, "spec": raw_spec}  # fmt: skip
    try:
        fn = parse_function(manifest)
    except SpecError as exc:
        _not_ready(patch, body, naming.INVALID_SPEC, "; ".join(exc.errors))
        raise kopf.PermanentError(str(exc)) from None
    if fn.code.path is not None:
        what = "code.path is a directory on the local backend's host: `kambda deploy DIR` packages and uploads it"
        _not_ready(patch, body, naming.UNSUPPORTED_CODE, what)
        raise kopf.PermanentError(what)
    if fn.code.image is None and settings.image_for(fn.runtime) is None:
        what = f"runtime {fn.runtime} is not offered by this installation; it offers {', '.join(settings.offered())}"
        _not_ready(patch, body, naming.UNSUPPORTED_RUNTIME, what)
        raise kopf.PermanentError(what)
    if resources.needs_code_store(fn) and settings.code_store is None:
        what = "code.sha256 or layers name packages in the code store, but this operator knows no code store"
        _not_ready(patch, body, naming.NO_CODE_STORE, what + " (--gateway-service or --code-store-url)")
        raise kopf.PermanentError(what)

    owner = resources.owner(body)
    await cluster.ensure(resources.credential_secret(fn, owner, settings), replace=True)
    await cluster.ensure(resources.network_policy(fn, owner, settings), replace=True)

    revisions = await cluster.revisions(namespace, name, str(meta.get("uid", "")))
    known = [
        versioning.Revision(int(r.revision), (r.metadata.annotations or {}).get(resources.ANNOTATION_HASH, ""))
        for r in revisions
    ]
    number, is_new = versioning.current_version(known, resources.version_hash(raw_spec))
    version = str(number)
    # The revision goes last: it is the commit mark. A crash before it leaves a version that is simply redone.
    config_map = resources.code_config_map(fn, version, owner)
    if config_map is not None:
        await cluster.ensure(config_map)
    await cluster.ensure(resources.deployment(fn, version, owner, settings))
    if resources.pool_refusal(fn) is None:
        size = resources.pool_size(settings.warm_pool_size, await cluster.namespace_labels(namespace))
        await cluster.ensure_pool(namespace, fn.runtime, size, owner, settings)
    if is_new:
        await cluster.ensure(resources.controller_revision(fn, raw_spec, number, owner))
        kopf.info(body, reason="VersionPublished", message=f"version {version}")
        known.append(versioning.Revision(number, resources.version_hash(raw_spec)))

    routed = await _routed_versions(cluster, namespace, name)
    asked = (meta.get("annotations") or {}).get(naming.DELETE_VERSIONS_ANNOTATION)
    requested = versioning.requested_deletions(asked)
    for old in versioning.versions_to_delete([r.version for r in known], routed, fn.retain_versions, requested):
        await cluster.delete_version(namespace, name, old)
        known = [r for r in known if r.version != old]
    if asked is not None:
        # What could not go (the newest, or routed to) stays asked for; what is gone is no longer.
        remaining = sorted(set(requested) & {r.version for r in known})
        patch.metadata.annotations[naming.DELETE_VERSIONS_ANNOTATION] = ",".join(map(str, remaining)) or None

    patch.status["latestVersion"] = version
    patch.status["versions"] = [
        {"version": str(r.version), "hash": r.hash} for r in sorted(known, key=lambda r: r.version)
    ]
    patch.status["observedGeneration"] = meta.get("generation")
    patch.status["instances"] = await cluster.ready_replicas(namespace, name)
    patch.status["conditions"] = _condition(
        True, "Reconciled", f"version {version} is deployed", meta.get("generation")
    )


async def _routed_versions(cluster: Cluster, namespace: str, function: str) -> set[int]:
    routed: set[int] = set()
    for alias in await cluster.aliases(namespace):
        spec = alias.get("spec", {})
        if spec.get("function") == function:
            routed |= {int(v) for v in [spec.get("version"), *(spec.get("additionalVersionWeights") or {})] if v}
    return routed


@kopf.on.resume(GROUP, VERSION, ALIASES)
@kopf.on.create(GROUP, VERSION, ALIASES)
@kopf.on.update(GROUP, VERSION, ALIASES)
async def reconcile_alias(
    *,
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    name: str,
    namespace: str | None,
    patch: kopf.Patch,
    memo: Any,
    **_: Any,
) -> None:
    cluster: Cluster = memo.cluster
    assert namespace is not None
    if str(spec.get("name") or name).isdigit():
        _not_ready(patch, body, "InvalidName", "an alias name cannot be a number (it would shadow a version)")
        raise kopf.PermanentError("numeric alias name")
    function = spec.get("function", "")
    version = str(spec.get("version", ""))
    weights = dict(spec.get("additionalVersionWeights") or {})
    fn = await cluster.get_function(namespace, function)
    if fn is None:
        _not_ready(patch, body, "FunctionNotFound", f"function {function} does not exist")
        raise kopf.TemporaryError(f"function {function} not found", delay=5)
    available = [v["version"] for v in (fn.get("status") or {}).get("versions") or []]
    problems = versioning.alias_problems(version, weights, available)
    if problems:
        _not_ready(patch, body, "InvalidRouting", "; ".join(problems))
        if any("does not exist" in p for p in problems):
            raise kopf.TemporaryError("; ".join(problems), delay=5)  # the version may be on its way
        raise kopf.PermanentError("; ".join(problems))
    routing = versioning.alias_routing(version, weights)
    # A merge patch merges maps: versions no longer routed to must be removed explicitly.
    dropped = {v: None for v in (status.get("routing") or {}) if v not in routing}
    patch.status["function"] = function
    patch.status["routing"] = {**dropped, **routing}
    patch.status["conditions"] = _condition(
        True, "Routed", f"{function}: {routing}", body.get("metadata", {}).get("generation")
    )


@kopf.on.event("", "v1", "pods", labels={resources.LABEL_COMPONENT: "function"})
async def function_pod_changed(*, body: kopf.Body, namespace: str | None, memo: Any, **_: Any) -> None:
    """A pod whose agent refused its code (hash mismatch, unsafe zip) marks its Function not ready, with the reason.

    Only for the Function's latest version: a refusal by an old version's pod must not hide a fixed new one."""
    reason = resources.code_refusal(body)
    labels = body.get("metadata", {}).get("labels") or {}
    function = labels.get(resources.LABEL_FUNCTION)
    version = labels.get(resources.LABEL_VERSION) or labels.get(naming.SPECIALISED_LABEL)  # a specialised pool pod
    if reason is None or namespace is None or not function:
        return
    cluster: Cluster = memo.cluster
    fn = await cluster.get_function(namespace, function)
    status = (fn or {}).get("status") or {}
    if fn is None or status.get("latestVersion") != version:
        return
    message = f"version {version}: the pod refused its code: {reason}"
    current: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    if current.get("reason") == naming.CODE_REFUSED and current.get("message") == message:
        return  # every restart of the crash-looping pod repeats the same words
    await cluster.patch_function_status(
        namespace,
        function,
        {"conditions": _condition(False, naming.CODE_REFUSED, message, fn.get("metadata", {}).get("generation"))},
    )
    kopf.warn(cast(kopf.Body, fn), reason=naming.CODE_REFUSED, message=message)  # a dict works as a Body
