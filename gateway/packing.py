"""Packed sandboxes: where a version's new instances go, and which pods its retired ones free (pure).

On Kubernetes a function pod hosts up to `slots` sandboxes of its version (`specs.slots_per_pod`). Scaling out is
then first a process start in a running pod (a Spawn on the stream of one of its sandboxes), and a pod start only
when the running pods are full:

    spawn    = into connected pods with free slots, the fullest first (so emptier pods drain and go away)
    deferred = what pods still starting will host: each brings slots - 1 more once its first sandbox connects,
               and a pod whose first runtime is not up yet its free slots (nothing is recorded for them: the
               scaler asks again when that runtime asks for work, and the spawn goes into that pod)
    new pods = ceil((start - spawned - deferred) / slots)
    released = a pod once none of its sandboxes is left, connected or starting (scale-in frees sandboxes first,
               then empty pods); a placeholder that never connected is a pod of its own

An instance id is its pod's name for the pod's first sandbox and `{pod}.{n}` for the others (`naming.sandbox_id`);
an id in `starting` that names no connected pod is a pod on its way (a backend placeholder). With one slot this is
exactly one instance per pod, as the local backend (every instance its own start) always is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from kambda.naming import SLOT_SEPARATOR, pod_of, sandbox_id, slot_of


@dataclass(frozen=True)
class Placement:
    spawns: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (a live sandbox of the pod to ask, the new ids)
    new_pods: int = 0

    @property
    def spawned(self) -> int:
        return sum(len(ids) for _, ids in self.spawns)


def _occupied(connected: Iterable[str], starting: Iterable[str]) -> tuple[dict[str, set[int]], int]:
    """Slots taken per connected pod (by connected or spawned sandboxes), and how many pods are on their way."""
    pods: dict[str, set[int]] = {}
    for instance_id in connected:
        pods.setdefault(pod_of(instance_id), set()).add(slot_of(instance_id))
    on_the_way = 0
    for instance_id in starting:
        pod = pod_of(instance_id)
        if pod in pods:
            pods[pod].add(slot_of(instance_id))
        elif SLOT_SEPARATOR not in instance_id:
            on_the_way += 1  # a spawn into a pod with no sandbox left will not come: it offers nothing
    return pods, on_the_way


def place(
    count: int,
    slots: int,
    connected: Iterable[str],
    live: Iterable[str],
    askable: Iterable[str],
    starting: Iterable[str],
) -> Placement:
    """Where `count` new instances go. `connected`: every connected instance (retiring ones still hold a slot);
    `live`: those not retiring; `askable`: live ones whose stream is up and whose runtime has asked for work (a
    Spawn can be written on it); `starting`: asked for, not yet connected. A pod with live sandboxes but none
    askable yet is still coming up: its free slots are deferred like those of a pod on its way."""
    if count <= 0:
        return Placement()
    if slots <= 1:
        return Placement(new_pods=count)
    pods, on_the_way = _occupied(connected, starting)
    alive = {pod_of(instance_id) for instance_id in live}
    via: dict[str, str] = {}
    for instance_id in askable:
        via.setdefault(pod_of(instance_id), instance_id)
    remaining = count
    deferred = on_the_way * (slots - 1)
    spawns: list[tuple[str, tuple[str, ...]]] = []
    for pod in sorted(pods, key=lambda p: (-len(pods[p]), p)):
        free = [slot for slot in range(slots) if slot not in pods[pod]]
        if pod in via and remaining > 0:
            taken = free[:remaining]
            if taken:
                spawns.append((via[pod], tuple(sandbox_id(pod, slot) for slot in taken)))
                remaining -= len(taken)
        elif pod in alive:
            deferred += len(free)  # not askable yet: spawned into once its first runtime is up
        # else: every sandbox of it is retiring, the pod is on its way out
    return Placement(spawns=tuple(spawns), new_pods=math.ceil(max(0, remaining - deferred) / slots))


def released(stopped: Iterable[str], remaining: Iterable[str], slots: int) -> list[str]:
    """The pods (or placeholders) freed by stopping `stopped`, given the instances that remain (connected or
    starting, not stopped). With one slot, every stopped instance is its own pod."""
    stopped = list(stopped)
    if slots <= 1:
        return stopped
    kept = {pod_of(instance_id) for instance_id in remaining}
    freed: list[str] = []
    for instance_id in stopped:
        pod = pod_of(instance_id)
        if pod not in kept and pod not in freed:
            freed.append(pod)
    return freed
