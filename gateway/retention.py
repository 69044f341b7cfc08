"""How long, and how much of, the statuses of finished asynchronous invocations are kept (pure decisions).

A status (`GET /v1/invocations/{id}`) outlives its event so that callers can fetch the result; without a bound on
size a busy gateway's statuses fill the disk long before they age out (a soak measured ~1.8 GB a day). Two limits
apply together, on both queue backends: an age (`--status-retention-hours`) and a size (`--status-max-mb`). Only
statuses of *finished* invocations are ever dropped — never an event that is waiting or running, never a dead
letter — and the oldest go first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# When the size budget is exceeded, statuses are trimmed to this fraction of it: trimming then happens once per
# tenth of the budget written rather than a few rows at every purge, and the pages it frees are exactly the
# room the next tenth fills again (so the file neither shrinks nor grows in the steady state).
LOW_WATER = 0.9
MIN_AGE = 1.0  # JetStream reads a max_age of 0 as "unlimited"; the smallest age it can express is kept instead
MIN_BYTES = 1  # likewise for max_bytes (0 or -1: unlimited)


@dataclass(frozen=True)
class Retention:
    max_age: float  # seconds a finished status is kept
    max_bytes: int  # budget for all finished statuses together


def rows_to_drop(rows: int, used: int, budget: int) -> int:
    """How many of the oldest of `rows` finished statuses, `used` bytes together, to drop to fit `budget`.

    Nothing while within budget; past it, enough rows of the average size to get down to `LOW_WATER` of it (the
    caller measures again afterwards and repeats if the oldest rows were smaller than the average).
    """
    if rows <= 0 or used <= max(budget, 0):
        return 0
    target = max(0, int(budget * LOW_WATER))
    return min(rows, math.ceil((used - target) * rows / used))


def pages_to_release(free_pages: int, page_size: int, budget: int) -> int:
    """Free pages of the database file worth giving back to the file system.

    Freed pages are reused by new rows, so up to one trim's worth of them (the room between the low water and the
    budget) is kept rather than shrinking the file only to grow it again; anything beyond, e.g. after statuses aged
    out or the budget was lowered, is released.
    """
    keep = max(0, int(budget * (1 - LOW_WATER))) // max(1, page_size)
    return max(0, free_pages - keep)


@dataclass(frozen=True)
class BucketLimits:
    """The limits of a JetStream key-value bucket's stream, as the server reports them."""

    max_age: float  # seconds; 0: unlimited
    max_bytes: int  # -1: unlimited
    discard_old: bool
    duplicate_window: float  # seconds


def status_bucket_limits(current: BucketLimits, retention: Retention) -> BucketLimits | None:
    """The limits the status bucket must get, or None when it has them already (e.g. set by another replica).

    It must discard *old* messages: buckets are created discarding new ones, which would make every status write
    fail once the bucket is full. JetStream refuses a duplicate window longer than the max age, so a shorter
    retention shortens that too.
    """
    age = max(MIN_AGE, retention.max_age)
    wanted = BucketLimits(age, max(MIN_BYTES, retention.max_bytes), True, min(current.duplicate_window, age))
    unchanged = (
        abs(current.max_age - wanted.max_age) < 1e-3
        and current.max_bytes == wanted.max_bytes
        and current.discard_old
        and current.duplicate_window == wanted.duplicate_window
    )
    return None if unchanged else wanted
