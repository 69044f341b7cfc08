"""The Kubernetes backend: a version's instances are the sandboxes in the pods of its Deployment
(`<function>-v<version>`, created by the operator at 0 replicas). The gateway changes only `replicas`, through the
scale subresource. A pod hosts up to `slots` sandboxes (packed sandboxes): the scaler spawns more into a running pod
over a sandbox's stream (`packing.py`) and asks this backend for pods only when they are full.

Pods cannot be named in advance, so started instances are placeholders until a pod's agent connects (the
dispatcher then retires the oldest placeholder). Freeing a pod (its last sandbox retired) deletes that pod and
lowers `replicas` by one, so the ReplicaSet does not pick a busy pod instead.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Iterable

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from kambda.specs import image_runtimes, slots_per_pod

from ..registry import FunctionVersion
from . import OnGone

log = logging.getLogger(__name__)
PLACEHOLDER = "pending-"
SCALE_ATTEMPTS = 20  # read-modify-write rounds before giving up (each lost round means another writer won)
CONFLICT_BACKOFF_SECONDS = 0.01  # the first retry's mean pause; doubles per lost round, capped at 32x


class KubernetesBackend:
    name = "kubernetes"

    def __init__(self, api: client.ApiClient, runtimes: Iterable[str] = ()) -> None:
        self._apps = client.AppsV1Api(api)
        self._core = client.CoreV1Api(api)
        self._runtimes = image_runtimes(runtimes)

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
        await self._scale_by(version, count)
        return [f"{PLACEHOLDER}{uuid.uuid4().hex[:12]}" for _ in range(count)]

    async def prepare(self, version: FunctionVersion) -> None:
        """Nothing here: a SnapStart pod makes its version's template itself when it starts (runtime/agent)."""

    async def discard(self, version: FunctionVersion) -> None:
        """Nothing here: a version's template ends with its pods."""

    async def stop_instances(self, version: FunctionVersion, instance_ids: list[str]) -> None:
        _, namespace = self._target(version)
        for pod in (i for i in instance_ids if not i.startswith(PLACEHOLDER)):
            try:  # an instance is its pod: its id is the pod's name
                await self._core.delete_namespaced_pod(pod, namespace, grace_period_seconds=5)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        await self._scale_by(version, -len(instance_ids))

    async def close(self) -> None:
        pass
