"""The scaler loop: on demand (work waiting with no idle instance) and on a tick, decide and apply per version.

Deciding is `scaling.decide`; applying is asking the backend for instances and retiring idle ones through the
dispatcher (a Stop on the instance's own stream, so an instance is never stopped while it holds work). With several
gateway replicas only a function's owner scales it (`owned`), so each version has one decider at a time; a replica
that gains a function adopts what runs of it before deciding anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from . import packing, scaling
from .backends import Backend
from .dispatching import Dispatcher, PoolSnapshot
from .metrics import Metrics
from .registry import FunctionVersion

log = logging.getLogger(__name__)


def policy_for(version: FunctionVersion, gateway_cap: int, provisioned: int = 0) -> scaling.Policy:
    spec = version.spec
    cap = spec.concurrency.reserved
    if cap is None:
        cap = spec.scaling.max_instances or gateway_cap
    return scaling.Policy(
        provisioned=provisioned,
        cap=min(cap, gateway_cap),
        idle_seconds=spec.scaling.idle_seconds,
        burst=spec.scaling.burst,
    )


def state_of(snapshot: PoolSnapshot) -> scaling.State:
    kept = set(snapshot.provisioned)  # provisioned instances never expire while wanted
    return scaling.State(
        active=snapshot.active,
        connected=snapshot.connected,
        starting=len(snapshot.starting),
        idle_since=(*(i for i in snapshot.idle if i[0] not in kept), *snapshot.starting),
        stalled_since=snapshot.stalled,
        provisioned=len(kept),
    )


class Scaler:
    def __init__(
        self,
        dispatcher: Dispatcher,
        backend: Backend,
        metrics: Metrics,
        *,
        gateway_cap: int,
        tick: float = 1.0,
        owned: Callable[[str], bool] = lambda function: True,
        clock: Callable[[], float] = time.monotonic,
        versions: Callable[[], list[FunctionVersion]] = list,
        provisioned: Callable[[FunctionVersion], int] = lambda version: 0,
    ) -> None:
        self._versions = versions  # every version served (the registry's), for what `prepare` makes ahead
        self._provisioned = provisioned  # a version's provisioned concurrency (provisioning.requested)
        self._prepared: dict[tuple[str, str], FunctionVersion] = {}
        self._owned = owned
        self._dispatcher = dispatcher
        self._backend = backend
        self._metrics = metrics
        self._gateway_cap = gateway_cap
        self._tick = tick
        self._clock = clock
        self._wake = asyncio.Event()
        self._adopted: set[tuple[str, str]] = set()

    def poke(self, key: tuple[str, str] | None = None) -> None:
        self._wake.set()

    def instance_gone(self, key: tuple[str, str], instance_id: str) -> None:
        self._dispatcher.withdraw(key, instance_id)  # wakes us (poke) if work still waits

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._tick)
            self._wake.clear()
            try:
                await self.reconcile(self._clock())
            except Exception:  # a failing backend must not stop scaling of the other versions for good
                log.exception("scaling step failed")
                await asyncio.sleep(self._tick)

    async def prepare_versions(self) -> None:
        """Before any request: versions with provisioned concurrency get a pool (so their instances are started
        below), SnapStart versions get their template (a version gone, or one this replica no longer owns, gives
        its template up)."""
        served = {v.key: v for v in self._versions() if self._owned(v.function)}
        for snapshot in self._dispatcher.snapshots():
            if snapshot.requested and snapshot.version.key not in served:
                self._dispatcher.provision(snapshot.version, 0)  # a version deleted (or moved): nothing kept
        for version in served.values():
            self._dispatcher.provision(version, self._provisioned(version))
        current = {key: v for key, v in served.items() if v.spec.snap_start}
        for key, version in current.items():
            previous = self._prepared.get(key)
            if previous is not version:
                if previous is not None:
                    await self._backend.discard(previous)
                await self._backend.prepare(version)
                self._prepared[key] = version
        for key in [k for k in self._prepared if k not in current]:
            await self._backend.discard(self._prepared.pop(key))

    async def reconcile(self, now: float) -> None:
        await self.prepare_versions()
        for snapshot in self._dispatcher.snapshots():
            version = snapshot.version
            key = version.key
            ended = self._dispatcher.ended(key)  # stopped instances whose streams have ended since the last step
            if not self._owned(version.function):
                self._adopted.discard(key)  # adopted afresh if it comes back
                continue
            if key not in self._adopted:
                # Instances left running by a previous gateway (or owner) count as starting until they reconnect,
                # so a restart does not scale up beside them (nor, if they never return, keep them past the idle
                # window). What it expected when it last owned the version is stale: replaced.
                self._adopted.add(key)
                left_running = await self._backend.adopt(version)
                self._dispatcher.adopt(key, scaling.still_to_reconnect(left_running, snapshot.connected), now)
                snapshot = self._dispatcher.snapshot(key) or snapshot
            policy = policy_for(version, self._gateway_cap, snapshot.requested)
            decision = scaling.decide(state_of(snapshot), policy, now)
            labels = (version.spec.name, version.version)
            slots = self._backend.slots(version)
            if decision.start:
                await self._start(snapshot, decision.start, slots, now)
            retired = 0
            for instance_id in decision.stop:
                if await self._dispatcher.retire_idle(key, instance_id, "idle"):
                    retired += 1  # sent Stop: what it holds is freed once its stream has ended (`ended`)
                elif self._dispatcher.withdraw(key, instance_id):
                    ended.append(instance_id)  # asked for, never came: withdrawn, freed now
                    retired += 1
            if ended:
                after = self._dispatcher.snapshot(key) or snapshot
                left = {*after.instances, *(i for i, _ in after.starting)} - set(ended)
                freed = packing.released(ended, left, slots)
                if freed:
                    await self._backend.stop_instances(version, freed)
            if retired:
                self._metrics.instances_stopped.labels(*labels).inc(retired)

    async def _start(self, snapshot: PoolSnapshot, count: int, slots: int, now: float) -> None:
        """`count` more instances: spawned into running pods with free slots first, new pods for the rest."""
        version = snapshot.version
        starting = [i for i, _ in snapshot.starting]
        placement = packing.place(count, slots, snapshot.instances, snapshot.live, snapshot.askable, starting)
        started = 0
        for via, instance_ids in placement.spawns:
            if await self._dispatcher.spawn(version.key, via, instance_ids, now):
                started += len(instance_ids)
        if placement.new_pods:
            ids = await self._backend.start_instances(version, placement.new_pods)
            self._dispatcher.expect(version.key, ids, now)
            started += len(ids)
        self._metrics.instances_started.labels(version.spec.name, version.version).inc(started)
