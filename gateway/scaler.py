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

from . import scaling
from .backends import Backend
from .dispatching import Dispatcher, Pool
from .metrics import Metrics

log = logging.getLogger(__name__)


def policy_for(pool: Pool, gateway_cap: int) -> scaling.Policy:
    spec = pool.version.spec
    cap = spec.concurrency.reserved
    if cap is None:
        cap = spec.scaling.max_instances or gateway_cap
    return scaling.Policy(
        provisioned=spec.concurrency.provisioned,
        cap=min(cap, gateway_cap),
        idle_seconds=spec.scaling.idle_seconds,
        burst=spec.scaling.burst,
    )


def state_of(pool: Pool) -> scaling.State:
    return scaling.State(
        active=pool.active,
        connected=len(pool.instances),
        starting=len(pool.starting),
        idle_since=(*((i.id, i.idle_since) for i in pool.idle), *pool.starting.items()),
        stalled_since=tuple((i.id, i.stalled_since) for i in pool.stalled() if i.stalled_since is not None),
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
    ) -> None:
        self._owned = owned
        self._dispatcher = dispatcher
        self._backend = backend
        self._metrics = metrics
        self._gateway_cap = gateway_cap
        self._tick = tick
        self._wake = asyncio.Event()
        self._adopted: set[tuple[str, str]] = set()

    def poke(self, pool: Pool | None = None) -> None:
        self._wake.set()

    def instance_gone(self, key: tuple[str, str], instance_id: str) -> None:
        pool = self._dispatcher.pools.get(key)
        if pool is not None:
            pool.starting.pop(instance_id, None)
            if pool.pending:
                self.poke()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._tick)
            self._wake.clear()
            try:
                await self.reconcile(time.monotonic())
            except Exception:  # a failing backend must not stop scaling of the other versions for good
                log.exception("scaling step failed")
                await asyncio.sleep(self._tick)

    async def reconcile(self, now: float) -> None:
        for pool in list(self._dispatcher.pools.values()):
            if not self._owned(pool.version.function):
                self._adopted.discard(pool.version.key)  # adopted afresh if it comes back
                continue
            if pool.version.key not in self._adopted:
                # Instances left running by a previous gateway count as starting until they reconnect, so a
                # restart does not scale up beside them (nor, if they never return, keep them past the idle window).
                self._adopted.add(pool.version.key)
                left_running = await self._backend.adopt(pool.version)
                pool.starting.clear()  # what it expected when it last owned the version is stale
                pool.starting.update(dict.fromkeys(scaling.still_to_reconnect(left_running, len(pool.instances)), now))
            decision = scaling.decide(state_of(pool), policy_for(pool, self._gateway_cap), now)
            labels = (pool.version.spec.name, pool.version.version)
            if decision.start:
                ids = await self._backend.start_instances(pool.version, decision.start)
                pool.starting.update(dict.fromkeys(ids, now))
                self._metrics.instances_started.labels(*labels).inc(len(ids))
            stopped: list[str] = []
            for instance_id in decision.stop:
                instance = pool.instances.get(instance_id)
                if instance is not None and await self._dispatcher.retire(instance, "idle"):
                    stopped.append(instance_id)
                elif pool.starting.pop(instance_id, None) is not None:
                    stopped.append(instance_id)  # asked for, never came: withdraw it
            if stopped:
                await self._backend.stop_instances(pool.version, stopped)
                self._metrics.instances_stopped.labels(*labels).inc(len(stopped))
