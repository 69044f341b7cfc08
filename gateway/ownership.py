"""Which gateway replica owns which function: the pure part (buckets, leases as observed, the rebalancing plan).

Every function hashes to one of a fixed number of buckets; each bucket is a Kubernetes Lease held by one replica at
a time. The holder of a function's bucket is its owner: it alone admits its invocations (so reserved concurrency and
the gateway's limit are counted in one place), dispatches them, scales its Deployments and holds its agents'
streams. The other replicas forward to it. Knative's autoscaler shards the same way (bucket leases), which keeps the
number of Leases fixed however many functions there are.

A Lease is judged by what this replica has seen, never by the timestamps in it (client-go's rule, which makes clock
skew between nodes harmless): a lease whose resourceVersion has not changed for its duration, as timed here, has
expired. A holder stops counting a bucket as its own at `SAFETY` x the duration after its last successful renewal
was sent, before a contender could take it.

The I/O — listing, renewing, taking and giving back Leases — is `leases.py`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

SAFETY = 0.8  # a holder trusts its bucket for this share of the lease duration after its last successful renewal


def bucket_of(function: str, buckets: int) -> int:
    """The bucket of `function` (namespace/name): stable across processes and releases."""
    digest = hashlib.sha256(function.encode()).digest()
    return int.from_bytes(digest[:8], "big") % buckets


def preference(identity: str, bucket: int) -> bytes:
    """Rendezvous order: each replica prefers different free buckets, so contenders rarely race for the same one."""
    return hashlib.sha256(f"{identity}/{bucket}".encode()).digest()


@dataclass(frozen=True)
class Observed:
    """One Lease as this replica last saw it."""

    holder: str  # "" when given back
    address: str  # the holder's `host:http_port host:grpc_port` as it advertises them
    resource_version: str
    changed_at: float  # monotonic time (here) at which this resourceVersion was first seen
    duration: float

    def expired(self, now: float) -> bool:
        return not self.holder or now - self.changed_at >= self.duration


@dataclass(frozen=True)
class Plan:
    take: tuple[int, ...] = ()  # free or expired buckets to try to take (in preference order)
    give: tuple[int, ...] = ()  # buckets held beyond a fair share, given back for a replica that has fewer


def fair_share(buckets: int, members: int) -> int:
    return math.ceil(buckets / max(1, members))


def plan(identity: str, buckets: dict[int, Observed | None], members: set[str], now: float, mine: set[int]) -> Plan:
    """What `identity` should do next, from the buckets (None: no Lease yet), the live members (itself included)
    and `mine`, the buckets this process holds (a Lease under its name it does not hold is a predecessor's, from
    before a restart: not free until it expires, and never given back by this process).

    A replica takes free buckets up to its fair share and gives back what it holds beyond it — but only when a live
    member holds less than its share, so replicas that briefly disagree on the membership do not pass buckets back
    and forth.
    """
    members = members | {identity}
    share = fair_share(len(buckets), len(members))
    held: dict[str, int] = dict.fromkeys(members, 0)
    free: list[int] = []
    for bucket, lease in buckets.items():
        if lease is None or lease.expired(now):
            free.append(bucket)
        elif lease.holder in held and lease.holder != identity:
            held[lease.holder] += 1
    ours = sorted(mine)
    take: tuple[int, ...] = ()
    give: tuple[int, ...] = ()
    if len(ours) < share and free:
        free.sort(key=lambda b: preference(identity, b))
        take = tuple(free[: share - len(ours)])
    elif len(ours) > share and any(count < share for holder, count in held.items() if holder != identity):
        # The least preferred go back: each replica keeps the buckets it would pick first.
        ours.sort(key=lambda b: preference(identity, b))
        give = tuple(ours[share:])
    return Plan(take=take, give=give)
