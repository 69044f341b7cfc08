from __future__ import annotations

import random
from collections import Counter

import pytest

from kambda.gateway.routing import pick


def test_single_version_takes_everything() -> None:
    assert {pick({"1": 1.0}, u / 10) for u in range(10)} == {"1"}


def test_boundaries() -> None:
    routing = {"1": 0.9, "2": 0.1}
    assert pick(routing, 0.0) == "1" and pick(routing, 0.8999) == "1"
    assert pick(routing, 0.9) == "2" and pick(routing, 0.99999) == "2"


def test_rounding_never_falls_off_the_end() -> None:
    assert pick({"1": 0.3333333, "2": 0.3333333, "3": 0.3333333}, 0.99999999) == "1"


@pytest.mark.parametrize("routing", [{"1": 0.9, "2": 0.1}, {"1": 0.5, "2": 0.3, "3": 0.2}, {"7": 0.8, "8": 0.2}])
def test_a_thousand_invocations_split_within_five_percent(routing: dict[str, float]) -> None:
    rng = random.Random(42)
    counts = Counter(pick(routing, rng.random()) for _ in range(1000))
    for version, share in routing.items():
        assert abs(counts[version] / 1000 - share) <= 0.05


def test_empty_routing_is_an_error() -> None:
    with pytest.raises(ValueError):
        pick({}, 0.5)
