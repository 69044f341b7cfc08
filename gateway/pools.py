"""Warm-pool pods waiting on this gateway to be specialised, by namespace and runtime (Kubernetes).

One owner of that state: the runtime interface's `Wait` adds a pod when its stream opens and removes it when the
stream ends; the Kubernetes backend takes the longest-waiting one when a version it may specialise needs a pod, and
hands it its order. A pod is in at most one place at a time: taken means out of the pool for good.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kambda.runtime.rpc import runtime_pb2 as pb

if TYPE_CHECKING:
    from .registry import FunctionVersion

# (version, pod) -> the pod's order again if it is that version's specialised pod, else None
Reissue = Callable[["FunctionVersion", str], Awaitable[pb.Specialise | None]]


@dataclass(eq=False)
class Waiter:
    namespace: str
    runtime: str
    pod: str
    _order: asyncio.Future[pb.Specialise] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def specialise(self, order: pb.Specialise) -> None:
        if not self._order.done():
            self._order.set_result(order)

    @property
    def specialised(self) -> bool:
        return self._order.done()

    async def order(self) -> pb.Specialise:
        return await self._order


class WarmPools:
    def __init__(self, reissue: Reissue) -> None:
        # (namespace, runtime) -> pod -> waiter, oldest first (a dict keeps the order of insertion)
        self._idle: dict[tuple[str, str], dict[str, Waiter]] = {}
        self._reissue = reissue

    async def reissue(self, version: FunctionVersion, pod: str) -> pb.Specialise | None:
        """A specialised pod's agent restarted: its order again, if the pod is that version's (the backend checks
        the pod's labels, which only the gateway sets), so that it never joins a pool again."""
        return await self._reissue(version, pod)

    def join(self, namespace: str, runtime: str, pod: str) -> Waiter:
        """A pool pod's wait began (a reconnecting pod replaces its earlier wait: it is the same pod)."""
        waiter = Waiter(namespace, runtime, pod)
        pool = self._idle.setdefault((namespace, runtime), {})
        pool.pop(pod, None)
        pool[pod] = waiter
        return waiter

    def leave(self, waiter: Waiter) -> None:
        pool = self._idle.get((waiter.namespace, waiter.runtime), {})
        if pool.get(waiter.pod) is waiter:
            del pool[waiter.pod]

    def take(self, namespace: str, runtime: str) -> Waiter | None:
        """The pod that has waited longest, out of the pool; None if none waits."""
        pool = self._idle.get((namespace, runtime))
        if not pool:
            return None
        pod = next(iter(pool))
        return pool.pop(pod)

    def give_back(self, waiter: Waiter) -> None:
        """A taken pod that could not be specialised (its relabelling failed) waits again, first in line."""
        pool = self._idle.setdefault((waiter.namespace, waiter.runtime), {})
        if waiter.pod not in pool and not waiter.specialised:
            self._idle[(waiter.namespace, waiter.runtime)] = {waiter.pod: waiter, **pool}

    def idle(self) -> dict[tuple[str, str], int]:
        """How many pods wait, per (namespace, runtime)."""
        return {key: len(pool) for key, pool in self._idle.items()}
