"""Weighted alias routing (pure): which version serves one invocation of an alias."""

from __future__ import annotations

from collections.abc import Mapping


def pick(routing: Mapping[str, float], u: float) -> str:
    """The version whose cumulative share first exceeds `u` (uniform in [0, 1)); versions in a stable order so the
    same `u` always picks the same version."""
    if not routing:
        raise ValueError("empty routing")
    total = 0.0
    ordered = sorted(routing.items(), key=lambda item: (-item[1], item[0]))
    for version, weight in ordered:
        total += weight
        if u < total:
            return version
    return ordered[0][0]  # rounding: shares that add up to 0.9999… still route everything
