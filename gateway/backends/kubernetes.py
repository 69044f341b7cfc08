"""The Kubernetes backend: a version's instances are the sandboxes in the pods of its Deployment
(`<function>-v<version>`, created by the operator at 0 replicas). The gateway changes only `replicas`, through the
scale subresource. A pod hosts up to `slots` sandboxes (packed sandboxes): the scaler spawns more into a running pod
over a sandbox's stream (`packing.py`) and asks this backend for pods only when they are full.

Pods cannot be named in advance, so started instances are placeholders until a pod's agent connects (the
dispatcher then retires the oldest placeholder). Freeing a pod (its last sandbox retired) deletes that pod and
lowers `replicas` by one, so the ReplicaSet does not pick a busy pod instead.

Warm pools: a version whose Deployment allows it (the operator's `kambda.dev/warm-pool` annotation) takes pods
from its namespace's pool first. Specialising one relabels it out of the pool (its ReplicaSet lets it go and
starts a replacement) and into the function (its NetworkPolicy applies), at most once per pod (a JSON Patch that
tests the pool label first), then sends it the order: the version's
sandbox settings and credential, read from the Deployment a dedicated pod would come from. Such a pod is named at
once (no placeholder), is owned by the version's Deployment (it goes with it) but not counted in its `replicas`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from kambda import credentials, naming
from kambda.runtime.rpc import runtime_pb2 as pb
from kambda.specs import image_runtimes, slots_per_pod

from ..pools import Waiter, WarmPools
from ..registry import FunctionVersion
from . import OnGone

log = logging.getLogger(__name__)
PLACEHOLDER = "pending-"
SCALE_ATTEMPTS = 20  # read-modify-write rounds before giving up (each lost round means another writer won)
CONFLICT_BACKOFF_SECONDS = 0.01  # the first retry's mean pause; doubles per lost round, capped at 32x


@dataclass(frozen=True)
class PoolTarget:
    """What a pool pod needs to become a pod of a version: what its Deployment gives a dedicated pod."""

    sandbox: str  # KAMBDA_SANDBOX
    slots: int  # KAMBDA_SLOTS
    owner: dict[str, Any]  # an ownerReference to the Deployment (not its controller)


def pool_target(deployment: Any) -> PoolTarget | None:
    """The version's pool settings from its Deployment, or None: its pods must not come from a pool."""
    annotations = deployment.metadata.annotations or {}
    if not annotations.get(naming.WARM_POOL_ANNOTATION):
        return None
    env = {e.name: e.value for e in deployment.spec.template.spec.containers[0].env or [] if e.value is not None}
    if "KAMBDA_SANDBOX" not in env:
        return None
    owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment.metadata.name,
             "uid": deployment.metadata.uid, "controller": False, "blockOwnerDeletion": False}  # fmt: skip
    return PoolTarget(env["KAMBDA_SANDBOX"], int(env.get("KAMBDA_SLOTS", "1")), owner)


def _label_path(key: str) -> str:
    return "/metadata/labels/" + key.replace("~", "~0").replace("/", "~1")  # JSON Pointer escapes (RFC 6901)


def specialisation_patch(function: str, version: str, runtime: str, owner: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON Patch that makes a pool pod a version's. Its first operation tests that the pod still carries its
    pool's label, so the API server applies it to a pod at most once, ever: nothing gives that label back, and a
    pod that served one function can never be specialised for another (whatever its agent then claims)."""
    return [
        {"op": "test", "path": _label_path(naming.POOL_LABEL), "value": naming.pool_deployment(runtime)},
        # Out of the pool: its ReplicaSet no longer selects it and starts another in its place.
        {"op": "remove", "path": _label_path(naming.POOL_LABEL)},
        # Into the function: its NetworkPolicy selects it (not the version's label: its ReplicaSet would adopt it).
        {"op": "add", "path": _label_path(naming.FUNCTION_LABEL), "value": function},
        {"op": "add", "path": _label_path(naming.SPECIALISED_LABEL), "value": version},
        {"op": "add", "path": _label_path("app.kubernetes.io/component"), "value": "function"},
        # Owned by the version's Deployment (it goes with the version) instead of the pool's ReplicaSet.
        {"op": "add", "path": "/metadata/ownerReferences", "value": [owner]},
    ]


class KubernetesBackend:
    name = "kubernetes"

    def __init__(
        self,
        api: client.ApiClient,
        runtimes: Iterable[str] = (),
        *,
        pools: bool = False,  # keep warm pools (`self.pools`): pool pods wait on this gateway's runtime interface
        signing_key: bytes = b"",  # for the credential a specialised pod is given
    ) -> None:
        self._apps = client.AppsV1Api(api)
        self._core = client.CoreV1Api(api)
        self._runtimes = image_runtimes(runtimes)
        self._pools = WarmPools(self._reissue) if pools else None
        self._key = signing_key
        self._specialised: set[str] = set()  # pool pods this backend specialised (not in any Deployment's replicas)

    @property
    def pools(self) -> WarmPools | None:
        return self._pools

    def runtimes(self) -> list[str]:
        """What the operator has images for: it is given the same --runtime-image-for list."""
        return list(self._runtimes)

    async def open(self, on_gone: OnGone, grpc_target: str) -> None:
        """Nothing to start: pods learn the gateway's address from the operator's pod template."""

    def _target(self, version: FunctionVersion) -> tuple[str, str]:
        return f"{version.spec.name}-v{version.version}", version.spec.namespace

    async def _scale_by(self, version: FunctionVersion, delta: int) -> int:
        """Change `replicas` by `delta`, at the resourceVersion read (optimistic concurrency): another writer in
        between (another gateway replica, the scaler's own concurrent steps) is a 409, and the change is applied
        again to what the scale is then, never lost."""
        name, namespace = self._target(version)
        for attempt in range(SCALE_ATTEMPTS):
            if attempt:
                # Writers that lost together retry apart: without jitter a dozen concurrent ones stay in lockstep,
                # one wins per round and the rest can run out of rounds (the ReplicaSet's own writes add losses).
                await asyncio.sleep(random.uniform(0, 2 * CONFLICT_BACKOFF_SECONDS * 2 ** min(attempt - 1, 5)))
            scale = await self._apps.read_namespaced_deployment_scale(name, namespace)
            replicas = max(0, (scale.spec.replicas or 0) + delta)
            # A patch naming the resourceVersion it was computed from is refused (409) if the scale moved since.
            body = {"metadata": {"resourceVersion": scale.metadata.resource_version}, "spec": {"replicas": replicas}}
            try:
                await self._apps.patch_namespaced_deployment_scale(name, namespace, body)
            except ApiException as exc:
                if exc.status == 409:
                    continue
                raise
            log.info("scaled %s/%s to %d", namespace, name, replicas)
            return replicas
        raise RuntimeError(f"{namespace}/{name}: the scale kept changing under {SCALE_ATTEMPTS} attempts")

    async def adopt(self, version: FunctionVersion) -> list[str]:
        name, namespace = self._target(version)
        try:
            scale = await self._apps.read_namespaced_deployment_scale(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return []
            raise
        return [f"{PLACEHOLDER}{uuid.uuid4().hex[:12]}" for _ in range(scale.spec.replicas or 0)]

    def slots(self, version: FunctionVersion) -> int:
        """The sandboxes one pod of the version hosts: the operator sized its memory limit for as many."""
        return slots_per_pod(version.spec)

    async def start_instances(self, version: FunctionVersion, count: int) -> list[str]:
        pods = await self._from_pool(version, count)
        rest = count - len(pods)
        if rest:
            await self._scale_by(version, rest)
        return pods + [f"{PLACEHOLDER}{uuid.uuid4().hex[:12]}" for _ in range(rest)]

    async def _from_pool(self, version: FunctionVersion, count: int) -> list[str]:
        """Up to `count` pool pods specialised for the version (their names); none if it may not use the pool."""
        pods: list[str] = []
        if self._pools is None:
            return pods
        target: PoolTarget | None = None
        while len(pods) < count:
            waiter = self._pools.take(version.spec.namespace, version.spec.runtime)
            if waiter is None:
                break
            if target is None:
                target = await self._pool_target(version)
                if target is None:
                    self._pools.give_back(waiter)
                    break
            if await self._specialise(version, waiter, target):
                pods.append(waiter.pod)
        return pods

    async def _pool_target(self, version: FunctionVersion) -> PoolTarget | None:
        name, namespace = self._target(version)
        try:
            return pool_target(await self._apps.read_namespaced_deployment(name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def _specialise(self, version: FunctionVersion, waiter: Waiter, target: PoolTarget) -> bool:
        _, namespace = self._target(version)
        patch = specialisation_patch(version.spec.name, version.version, version.spec.runtime, target.owner)
        try:
            await self._core.patch_namespaced_pod(
                waiter.pod, namespace, patch,
                _content_type="application/json-patch+json",  # type: ignore[call-arg]
            )  # fmt: skip
        except ApiException as exc:
            if exc.status == 422:
                # Not a pool pod (any more): it was specialised before and its agent came back to the pool (a
                # function ended it and removed its marker). Its code and /tmp are a function's: it goes.
                log.warning("pool pod %s/%s was specialised before: deleting it", namespace, waiter.pod)
                with contextlib.suppress(ApiException):
                    await self._core.delete_namespaced_pod(waiter.pod, namespace, grace_period_seconds=0)
            elif exc.status != 404:  # a pod that is gone does not wait any more
                if self._pools is not None:
                    self._pools.give_back(waiter)
                log.warning("could not specialise pool pod %s/%s: %s", namespace, waiter.pod, exc.reason)
            return False
        self._specialised.add(waiter.pod)
        waiter.specialise(self._order(version, target))
        log.info("specialised pool pod %s/%s for %s:%s", namespace, waiter.pod, version.function, version.version)
        return True

    async def prepare(self, version: FunctionVersion) -> None:
        """Nothing here: a SnapStart pod makes its version's template itself when it starts (runtime/agent)."""

    async def discard(self, version: FunctionVersion) -> None:
        """Nothing here: a version's template ends with its pods."""

    def _order(self, version: FunctionVersion, target: PoolTarget) -> pb.Specialise:
        credential = credentials.credential_for(self._key, version.function)
        files = dict(version.spec.code.files or {})
        return pb.Specialise(sandbox=target.sandbox, credential=credential, slots=target.slots, files=files)

    async def _reissue(self, version: FunctionVersion, pod: str) -> pb.Specialise | None:
        """The order of a pod that is labelled as the version's specialised pod (only this gateway sets those
        labels: a function cannot claim another's order by naming it), else None."""
        _, namespace = self._target(version)
        try:
            labels = (await self._core.read_namespaced_pod(pod, namespace)).metadata.labels or {}
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        mine = labels.get(naming.FUNCTION_LABEL) == version.spec.name
        if not mine or labels.get(naming.SPECIALISED_LABEL) != version.version or naming.POOL_LABEL in labels:
            return None
        target = await self._pool_target(version)
        return None if target is None else self._order(version, target)

    async def stop_instances(self, version: FunctionVersion, instance_ids: list[str]) -> None:
        _, namespace = self._target(version)
        counted = len(instance_ids)  # in the Deployment's replicas: all but specialised pool pods
        for pod in (i for i in instance_ids if not i.startswith(PLACEHOLDER)):
            specialised = pod in self._specialised
            try:  # an instance is its pod: its id is the pod's name
                deleted = await self._core.delete_namespaced_pod(pod, namespace, grace_period_seconds=5)
                labels = getattr(getattr(deleted, "metadata", None), "labels", None) or {}
                specialised = specialised or naming.SPECIALISED_LABEL in labels  # one of an earlier gateway's
            except ApiException as exc:
                if exc.status != 404:
                    raise
            self._specialised.discard(pod)
            counted -= specialised
        if counted:
            await self._scale_by(version, -counted)

    async def close(self) -> None:
        pass
