"""Where an invocation runs: on this replica when it owns the function, else forwarded to the replica that does.

Any replica accepts any request (behind one Service); only the owner of a function (`leases.Ownership`) admits and
dispatches its invocations, so its limits are counted in one place and its instances have one dispatcher. The
forwarded hop is one HTTP request to the owner's internal route (`peering.py`), authenticated with the key the
replicas share, and answered with the Outcome.

While a function has no owner (its owner died and its lease has not expired yet; a bucket being handed over) a
request waits for one, up to `wait`; a forward that cannot reach the owner, or whose connection breaks before an
answer, goes to the next owner once the owners change. An invocation that had started on an owner that then died
may so run twice — exactly what the SDK's retry of a 5xx would do. Only an answer that makes no sense fails the
request (`OwnerLost`, a 502 the SDKs retry).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from .dispatching import Invocation, Moved, Outcome
from .invoking import Invoker
from .leases import Ownership, Peer
from .metrics import Metrics
from .registry import FunctionVersion

log = logging.getLogger(__name__)


MAX_ATTEMPTS = 10  # owners asked in turn before giving up (a Moved or NotOwner each time: owners in flux)


class NoOwner(Exception):
    """No replica owned the function within the wait (the lease keeper cannot reach the API server)."""


class OwnerLost(Exception):
    """The owner went away while it held the invocation: it may or may not have run."""


class Unreachable(Exception):
    """The owner could not be reached, or went away before it answered: the invocation goes to the next owner."""


class NotOwner(Exception):
    """The replica asked is not (or no longer) the function's owner: nothing ran there."""


class NotYet(NotOwner):
    """The owner does not know this version yet (its watch is a moment behind this replica's): nothing ran; ask
    again shortly, the owners have not changed."""


NOT_YET_DELAY = 0.2


class Forwarder(Protocol):
    async def run(self, peer: Peer, version: FunctionVersion, invocation: Invocation) -> Outcome:
        """Run on `peer`. Raises NotOwner when nothing ran there, Unreachable when the owner is gone (it may have
        started it), OwnerLost for an answer that makes no sense, invoking.Throttled and dispatching.NoInstance as
        the owner's Invoker does."""
        ...


class Placement:
    def __init__(
        self,
        ownership: Ownership,
        invoker: Invoker,
        forwarder: Forwarder,
        metrics: Metrics,
        *,
        wait: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ownership = ownership
        self._invoker = invoker
        self._forwarder = forwarder
        self._metrics = metrics
        self._counted: dict[tuple[str, str], Any] = {}  # (function, placement) -> its counter (labels() locks)
        self._wait = wait
        self._clock = clock

    def _count(self, function: str, placement: str) -> None:
        counter = self._counted.get((function, placement))
        if counter is None:
            counter = self._counted[(function, placement)] = self._metrics.placements.labels(function, placement)
        counter.inc()

    async def run(self, version: FunctionVersion, invocation: Invocation) -> Outcome:
        """Run where the function's owner is. Raises invoking.Throttled, dispatching.NoInstance, NoOwner, OwnerLost."""
        if self._ownership.single:  # no replicas: no owner to look up (the warm path of one gateway)
            return await self._invoker.run(version, invocation)
        function = version.function
        deadline: float | None = None  # of the wait for an owner, from when waiting starts
        tries = 0  # runs and forwards (a wait for the owners to change is bounded by the deadline instead)
        while tries < MAX_ATTEMPTS:
            peer = self._ownership.owner(function)
            tries += peer is not None
            if peer is self._ownership.me:
                self._count(version.spec.name, "here")
                try:
                    return await self._invoker.run(version, invocation)
                except Moved:  # the function went to another replica while the invocation waited here
                    invocation = invocation.again()
                    continue
            if peer is not None:
                self._count(version.spec.name, "forwarded")
                try:
                    return await self._forwarder.run(peer, version, invocation)
                except NotYet:
                    await asyncio.sleep(NOT_YET_DELAY)
                    continue
                except (Unreachable, NotOwner) as exc:
                    log.info("%s: owner %s: %s", function, peer.identity, exc)
                    if self._ownership.owner(function) != peer:
                        continue  # the owners changed meanwhile: straight to the new one
            now = self._clock()
            deadline = now + self._wait if deadline is None else deadline
            if now >= deadline:
                break
            await self._ownership.changed(deadline - now)
        raise NoOwner(function)
