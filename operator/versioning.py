"""Which version a Function's spec is, and which old versions may go (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Revision:
    version: int
    hash: str


def current_version(existing: Iterable[Revision], spec_hash: str) -> tuple[int, bool]:
    """The version number for `spec_hash` and whether it must be created.

    Only the newest version is compared: changing a spec back to an older shape publishes a new version, as Lambda
    does, because the older number may be pinned by an alias with other expectations."""
    revisions = sorted(existing, key=lambda r: r.version)
    if revisions and revisions[-1].hash == spec_hash:
        return revisions[-1].version, False
    return (revisions[-1].version + 1 if revisions else 1), True


def versions_to_delete(
    existing: Iterable[int], routed: Iterable[int], retain: int, requested: Iterable[int] = ()
) -> list[int]:
    """Versions beyond the newest `retain`, and those `requested` (DeleteFunction with a Qualifier), that no alias
    routes traffic to; never the newest, which is what $LATEST runs."""
    ordered = sorted(set(existing), reverse=True)
    asked = set(requested) - set(ordered[:1])
    keep = (set(ordered[: max(1, retain)]) - asked) | set(routed)
    return sorted(v for v in ordered if v not in keep)


def requested_deletions(annotation: str | None) -> list[int]:
    """The version numbers in the delete-versions annotation (anything else in it is ignored)."""
    return [int(v) for v in (annotation or "").split(",") if v.strip().isdigit()]


def alias_routing(version: str, weights: Mapping[str, float] | None) -> dict[str, float]:
    """Traffic shares of an alias: the additional weights, the rest to the primary version."""
    routing = {str(v): float(w) for v, w in (weights or {}).items() if float(w) > 0 and str(v) != version}
    routing[version] = round(1.0 - sum(routing.values()), 10)
    return routing


def alias_problems(version: str, weights: Mapping[str, float] | None, available: Iterable[str]) -> list[str]:
    known = set(available)
    problems = []
    if version not in known:
        problems.append(f"spec.version: version {version} does not exist")
    for v, w in (weights or {}).items():
        if str(v) not in known:
            problems.append(f"spec.additionalVersionWeights.{v}: version {v} does not exist")
        if not 0 <= float(w) <= 1:
            problems.append(f"spec.additionalVersionWeights.{v}: must be between 0 and 1")
    if sum(float(w) for w in (weights or {}).values()) > 1:
        problems.append("spec.additionalVersionWeights: the weights must add up to at most 1")
    return problems
