"""Where an invocation runs: on this replica when it owns the function, else forwarded to the replica that does.

Any replica accepts any request (behind one Service); only the owner of a function (`leases.Ownership`) admits and
dispatches its invocations, so its limits are counted in one place and its instances have one dispatcher. The
forwarded hop is one HTTP request to the owner's internal route (`peering.py`), authenticated with the key the
replicas share, and answered with the Outcome.

While a function has no owner (its owner died and its lease has not expired yet; a bucket being handed over) a
request waits for one, up to `wait`; a forward that cannot reach the owner waits for the owners to change and goes to
the new one. Only a request that reached an owner that then died fails (`OwnerLost`, a 502 the SDKs retry), since it
may have run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from .dispatching import Invocation, Moved, Outcome
from .invoking import Invoker
from .leases import Ownership, Peer
from .metrics import Metrics
from .registry import FunctionVersion

log = logging.getLogger(__name__)


class NoOwner(Exception):
    """No replica owned the function within the wait (the lease keeper cannot reach the API server)."""


class OwnerLost(Exception):
    """The owner went away while it held the invocation: it may or may not have run."""


class Unreachable(Exception):
    """The owner could not be reached at all: the invocation was not delivered, so it may go elsewhere."""


class NotOwner(Exception):
    """The replica asked is not (or no longer) the function's owner: nothing ran there."""


class Forwarder(Protocol):
    async def run(self, peer: Peer, version: FunctionVersion, invocation: Invocation) -> Outcome:
        """Run on `peer`. Raises Unreachable or NotOwner when nothing ran, OwnerLost when it may have,
        invoking.Throttled and dispatching.NoInstance as the owner's Invoker does."""
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
        self._wait = wait
        self._clock = clock

    async def run(self, version: FunctionVersion, invocation: Invocation) -> Outcome:
        """Run where the function's owner is. Raises invoking.Throttled, dispatching.NoInstance, NoOwner, OwnerLost."""
        deadline = self._clock() + self._wait
        while True:
            peer = self._ownership.owner(version.function)
            if peer == self._ownership.me:
                self._metrics.placements.labels(version.spec.name, "here").inc()
                try:
                    return await self._invoker.run(version, invocation)
                except Moved:  # the function went to another replica while the invocation waited here
                    invocation = invocation.again()
                    continue
            if peer is not None:
                self._metrics.placements.labels(version.spec.name, "forwarded").inc()
                try:
                    return await self._forwarder.run(peer, version, invocation)
                except (Unreachable, NotOwner) as exc:
                    log.info("%s: owner %s: %s; waiting for the owners to change", version.function, peer.identity, exc)
            left = deadline - self._clock()
            if left <= 0:
                raise NoOwner(version.function)
            await self._ownership.changed(left)
