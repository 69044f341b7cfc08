"""Provisioned concurrency, decided (pure): how many initialised instances each version keeps, and its status.

Lambda configures provisioned concurrency per qualifier: a published version, or an alias (whose executions are
shared among its versions by their routing weights). kambda also keeps `spec.concurrency.provisioned` for the
version `$LATEST` runs: every kambda version is published, so that is the newest one.

Instances kept for it are *provisioned*: started before any request (their runtime initialises at once, with
`AWS_LAMBDA_INITIALIZATION_TYPE=provisioned-concurrency`), never retired while requested, and reporting no
`Init Duration` (init happened ahead, as on Lambda). Work beyond them is served by on-demand instances.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kambda.specs import FunctionSpec

READY, IN_PROGRESS = "READY", "IN_PROGRESS"


def shares(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """`total` executions split by routing weights (summing to 1), in whole instances that add up to `total`:
    each version gets the floor of its share, and the remainder goes to the largest fractions (heaviest first)."""
    if total <= 0 or not weights:
        return {}
    exact = {version: total * weight for version, weight in weights.items()}
    floors = {version: math.floor(value) for version, value in exact.items()}
    left = total - sum(floors.values())
    by_fraction = sorted(exact, key=lambda v: (-(exact[v] - floors[v]), -weights[v], v))
    for version in by_fraction[:left]:
        floors[version] += 1
    return {version: n for version, n in floors.items() if n > 0}


def requested(
    spec: FunctionSpec, version: str, latest: str | None, routing: Callable[[str], Mapping[str, float] | None]
) -> int:
    """The provisioned concurrency `version` of the function `spec` must keep. `latest`: the version `$LATEST`
    runs; `routing(alias)`: that alias's versions and weights (None for a qualifier that is not an alias)."""
    conc = spec.concurrency
    count = conc.provisioned if version == latest else 0
    for qualifier, executions in conc.provisioned_configs.items():
        weights = routing(qualifier)
        if weights is None:
            count += executions if qualifier == version else 0
        else:
            count += shares(executions, weights).get(version, 0)
    return count


@dataclass(frozen=True)
class Status:
    """What GetProvisionedConcurrencyConfig reports for a qualifier."""

    requested: int
    allocated: int  # provisioned instances whose runtime has initialised
    available: int  # of those, the ones connected and not stalled

    @property
    def state(self) -> str:
        return READY if self.allocated >= self.requested else IN_PROGRESS

    def __add__(self, other: Status) -> Status:
        return Status(
            self.requested + other.requested, self.allocated + other.allocated, self.available + other.available
        )
