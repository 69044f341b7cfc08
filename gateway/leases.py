"""Function ownership among gateway replicas, kept in Kubernetes Leases (the pure rules are `ownership.py`).

Each replica keeps a member Lease (`<prefix>-member-<identity>`: it is alive, and where it listens) and holds some
of the bucket Leases (`<prefix>-bucket-<n>`). Every `interval` it lists the Leases, renews its own, takes free ones
up to its fair share and gives back extras; every write names the resourceVersion it read, so the API server lets
exactly one contender win a bucket. `Ownership` is the state the rest of the gateway reads: who owns a function now,
and an event for "the owners changed". Its only writer is the `LeaseKeeper` loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from kambda import naming

from . import ownership
from .ownership import Observed

log = logging.getLogger(__name__)
GONE_AFTER = 5  # lease durations without a renewal before a member Lease is deleted
LEASE_LABEL = f"{naming.GROUP}/gateway-lease"  # its value: the prefix (the release) the Lease belongs to
ADDRESS_ANNOTATION = f"{naming.GROUP}/address"  # "http_host:port grpc_host:port" of the holder
BUCKETS_ANNOTATION = f"{naming.GROUP}/buckets"  # how many buckets the holder shares functions in


@dataclass(frozen=True)
class Peer:
    """A replica, as its member Lease advertises it."""

    identity: str
    http: str  # host:port of its HTTP API
    grpc: str  # host:port of its runtime interface

    @classmethod
    def parse(cls, identity: str, address: str) -> Peer | None:
        parts = address.split()
        return cls(identity, parts[0], parts[1]) if len(parts) == 2 else None

    @property
    def address(self) -> str:
        return f"{self.http} {self.grpc}"


Clock = Callable[[], float]
Listener = Callable[[set[int], set[int]], None]  # (buckets gained, buckets lost)


class Ownership:
    """Who owns which function, as this replica knows it. Written only by its LeaseKeeper (`_update`)."""

    def __init__(self, me: Peer, buckets: int, *, clock: Clock = time.monotonic) -> None:
        self.me = me
        self.buckets = buckets
        self._clock = clock
        self._owners: dict[int, Peer] = {}
        self._mine: dict[int, float] = {}  # bucket -> monotonic time the last successful renewal was sent
        self._duration = 0.0
        self._changed = asyncio.Event()
        self._listeners: list[Listener] = []
        self._bucket_of: dict[str, int] = {}  # a hash per invocation is on the warm path: computed once
        self._published: set[int] = set()  # held() as the listeners last heard it
        self.single = False  # Ownership.alone(): no replicas, every function is this gateway's

    @classmethod
    def alone(cls, me: Peer | None = None) -> Ownership:
        """A gateway without replicas: it owns every function, for good."""
        state = cls(me or Peer("gateway", "", ""), 1)
        state._mine, state._duration, state._published, state.single = {0: 0.0}, math.inf, {0}, True
        return state

    def share(self, limit: int) -> int:
        """This replica's part of a gateway-wide `limit`: each bucket's part of it, summed over the buckets held.
        The parts add up to `limit` exactly, so the replicas together never admit more."""
        base, extra = divmod(limit, self.buckets)
        return sum(base + (1 if bucket < extra else 0) for bucket in self.held())

    def bucket(self, function: str) -> int:
        bucket = self._bucket_of.get(function)
        if bucket is None:
            bucket = self._bucket_of[function] = ownership.bucket_of(function, self.buckets)
        return bucket

    def is_mine(self, function: str) -> bool:
        return self.holds(self.bucket(function))

    def holds(self, bucket: int) -> bool:
        since = self._mine.get(bucket)
        return since is not None and self._clock() - since < self._duration * ownership.SAFETY

    def owner(self, function: str) -> Peer | None:
        """The replica to send `function`'s work to: this one, another, or None while nobody owns it."""
        bucket = self.bucket(function)
        if self.holds(bucket):
            return self.me
        peer = self._owners.get(bucket)
        return None if peer is None or peer.identity == self.me.identity else peer

    def held(self) -> set[int]:
        return {b for b in self._mine if self.holds(b)}

    def on_change(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def changed(self, timeout: float) -> None:
        """Wait (at most `timeout`) for the next change of owners."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def _update(self, owners: dict[int, Peer], mine: dict[int, float], duration: float) -> None:
        # Against what was last published, not what holds now: a bucket that lapsed by time since (renewals failed)
        # must still be reported lost, so that its waiting work and idle instances are handed over.
        before = self._published
        previous = self._owners
        self._owners, self._mine, self._duration = owners, mine, duration
        after = self._published = self.held()
        if owners != previous or before != after:
            event, self._changed = self._changed, asyncio.Event()
            event.set()
        if before != after:
            for listener in self._listeners:
                listener(after - before, before - after)


def _micro_time(now: datetime.datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseKeeper:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        prefix: str,
        state: Ownership,
        *,
        duration: float = 6.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._leases = client.CoordinationV1Api(api)
        self._namespace = namespace
        self._prefix = prefix
        self._state = state
        self._duration = duration
        self.interval = duration / 3
        self._clock = clock
        self._seen: dict[str, Observed] = {}
        self._mine: dict[int, float] = {}
        self._stopping = False
        self._written = max(1, round(duration))  # what the Leases say (whole seconds): the holder trusts the shorter
        # A call slower than this cannot renew in time anyway (a bucket is trusted this long): give up on it, rather
        # than hang a step on a connection that died; a busy API server gets every second of it.
        self._patience = min(duration, self._written) * ownership.SAFETY
        self._lock = asyncio.Lock()  # a step and the release never interleave (both change _mine)

    # ---- names -------------------------------------------------------------------------------------------------

    def bucket_name(self, bucket: int) -> str:
        return f"{self._prefix}-bucket-{bucket}"

    def member_name(self, identity: str) -> str:
        return f"{self._prefix}-member-{identity}"

    # ---- the loop ----------------------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            started = self._clock()
            try:
                await self.step()
            except Exception:  # the API server away for a moment: held buckets lapse by themselves (SAFETY)
                log.exception("lease step failed")
            await asyncio.sleep(max(0.0, self.interval - (self._clock() - started)))

    async def step(self) -> None:
        """One round: look, renew, rebalance; what it ends with is published even if a call failed half-way (the
        renewals that succeeded count, and a bucket that lapsed is handed over)."""
        async with self._lock:
            try:
                await self._step()
            finally:
                self._publish()

    async def _list(self) -> dict[str, Any]:
        listed = await self._leases.list_namespaced_lease(
            self._namespace, label_selector=f"{LEASE_LABEL}={self._prefix}", _request_timeout=self._patience
        )
        return {item.metadata.name: item for item in listed.items}

    async def _step(self) -> None:
        by_name = await self._list()
        now = self._clock()
        self._observe(by_name, now)
        me = self._state.me
        if not self._stopping:  # a replica that has left keeps looking (it forwards), but is no member
            await self._write(self.member_name(me.identity), by_name, holder=me.identity)
        for bucket in list(self._mine):
            sent = self._clock()
            if await self._write(self.bucket_name(bucket), by_name, holder=me.identity, expect_holder=me.identity):
                self._mine[bucket] = sent
            else:
                del self._mine[bucket]
        if not self._stopping and self._agreed(by_name, now):
            decided = ownership.plan(me.identity, self._buckets(), self._members(now), now, set(self._mine))
            for bucket in decided.give:
                self._mine.pop(bucket, None)  # not ours from now: before the write, which lets others take it
                self._publish()
                await self._write(self.bucket_name(bucket), by_name, holder="", expect_holder=me.identity)
            for bucket in decided.take:
                sent = self._clock()
                if await self._write(self.bucket_name(bucket), by_name, holder=me.identity, taking=True):
                    self._mine[bucket] = sent
            await self._collect(now)

    async def release(self) -> None:
        """Give every bucket back and leave (a replica stopping): the others take over at their next step, not after
        the leases expire. The loop goes on observing, so that this replica forwards to the new owners."""
        async with self._lock:
            self._stopping = True
            buckets, self._mine = list(self._mine), {}
            self._publish()
            by_name = await self._list()
            me = self._state.me.identity
            for bucket in buckets:
                await self._write(self.bucket_name(bucket), by_name, holder="", expect_holder=me)
            with contextlib.suppress(ApiException):
                await self._leases.delete_namespaced_lease(self.member_name(me), self._namespace)

    def _agreed(self, by_name: dict[str, Any], now: float) -> bool:
        """Whether every live member shares functions in as many buckets as this one. With another count a
        function hashes to another bucket there, and two replicas could both own it: take nothing until the
        other count is gone (changing --replica-buckets means stopping every replica first)."""
        mine = str(self._state.buckets)
        for name in self._members_named(now):
            theirs = (by_name[name].metadata.annotations or {}).get(BUCKETS_ANNOTATION, mine)
            if theirs != mine:
                log.error("member %s shares functions in %s buckets, this replica in %s: taking none", name, theirs,
                          mine)  # fmt: skip
                return False
        return True

    def _members_named(self, now: float) -> list[str]:
        prefix = self.member_name("")
        return [name for name, lease in self._seen.items() if name.startswith(prefix) and not lease.expired(now)]

    async def _collect(self, now: float) -> None:
        """Member Leases of replicas gone for good (a pod never comes back under its name) are deleted, at the
        resourceVersion seen, so that a live one renewing meanwhile is left alone."""
        prefix, me = self.member_name(""), self.member_name(self._state.me.identity)
        for name, lease in self._seen.items():
            if name.startswith(prefix) and name != me and now - lease.changed_at >= GONE_AFTER * lease.duration:
                body = client.V1DeleteOptions(
                    preconditions=client.V1Preconditions(resource_version=lease.resource_version)
                )
                with contextlib.suppress(ApiException):
                    await self._leases.delete_namespaced_lease(name, self._namespace, body=body)

    # ---- what was seen -----------------------------------------------------------------------------------------

    def _observe(self, by_name: dict[str, Any], now: float) -> None:
        seen: dict[str, Observed] = {}
        for name, item in by_name.items():
            spec = item.spec
            rv = item.metadata.resource_version
            previous = self._seen.get(name)
            seen[name] = Observed(
                holder=spec.holder_identity or "",
                address=(item.metadata.annotations or {}).get(ADDRESS_ANNOTATION, ""),
                resource_version=rv,
                changed_at=previous.changed_at if previous is not None and previous.resource_version == rv else now,
                duration=float(spec.lease_duration_seconds or self._duration),
            )
        self._seen = seen

    def _buckets(self) -> dict[int, Observed | None]:
        return {b: self._seen.get(self.bucket_name(b)) for b in range(self._state.buckets)}

    def _members(self, now: float) -> set[str]:
        prefix = self.member_name("")
        return {
            lease.holder for name, lease in self._seen.items() if name.startswith(prefix) and not lease.expired(now)
        }

    def _publish(self) -> None:
        now = self._clock()
        addresses = {
            lease.holder: lease.address
            for name, lease in self._seen.items()
            if name.startswith(self.member_name("")) and not lease.expired(now)
        }
        owners: dict[int, Peer] = {}
        for bucket, lease in self._buckets().items():
            if lease is None or lease.expired(now) or lease.holder not in addresses:
                continue
            peer = Peer.parse(lease.holder, addresses[lease.holder])
            if peer is not None:
                owners[bucket] = peer
        self._state._update(owners, dict(self._mine), min(self._duration, float(self._written)))

    # ---- writes ------------------------------------------------------------------------------------------------

    async def _write(
        self,
        name: str,
        by_name: dict[str, Any],
        *,
        holder: str,
        expect_holder: str | None = None,
        taking: bool = False,
    ) -> bool:
        """Create or replace Lease `name` at the resourceVersion listed, or last written by this step (409: someone
        else wrote first); `by_name` then holds what was written."""
        now = datetime.datetime.now(datetime.UTC)
        current = by_name.get(name)
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "labels": {LEASE_LABEL: self._prefix},
                "annotations": {
                    ADDRESS_ANNOTATION: self._state.me.address,
                    BUCKETS_ANNOTATION: str(self._state.buckets),
                },
            },
            "spec": {
                "holderIdentity": holder or None,
                "leaseDurationSeconds": self._written,
                "renewTime": _micro_time(now),
            },
        }
        try:
            if current is None:
                body["spec"]["acquireTime"] = _micro_time(now)
                by_name[name] = await self._leases.create_namespaced_lease(
                    self._namespace, cast(Any, body), _request_timeout=self._patience
                )
                return True
            if expect_holder is not None and (current.spec.holder_identity or "") != expect_holder:
                return False  # taken over meanwhile (we were seen as expired)
            if taking:
                seen = self._seen.get(name)
                if seen is None or not seen.expired(self._clock()):
                    return False
                body["spec"]["acquireTime"] = _micro_time(now)
                body["spec"]["leaseTransitions"] = (current.spec.lease_transitions or 0) + 1
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            # What was written is what the next write of this step starts from: a bucket renewed and then given back
            # in one step must not be refused (409) for the resourceVersion its own renewal moved on.
            by_name[name] = await self._leases.replace_namespaced_lease(
                name, self._namespace, cast(Any, body), _request_timeout=self._patience
            )
            return True
        except ApiException as exc:
            if exc.status not in (404, 409):  # 409: another wrote first; anything else: this round, not written
                log.warning("lease %s not written: %s %s", name, exc.status, exc.reason)
            return False
