"""Provisioned concurrency, decided: shares of an alias's executions, what a version keeps, the initialization type
an instance gets when it connects, that provisioned instances are served first and never expire while wanted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from kambda import naming, specs
from kambda.gateway import provisioning, scaling
from kambda.gateway.dispatching import Dispatcher, Invocation
from kambda.gateway.registry import FunctionVersion, Registry
from kambda.gateway.scaler import state_of
from tests.unit.test_dispatching import ManualClock, Stream


def spec(**fields: Any) -> specs.FunctionSpec:
    return specs.parse_function({
        "apiVersion": "kambda.dev/v1alpha1", "kind": "Function", "metadata": {"name": "f"},
        "spec": {"runtime": "python3.11", "handler": "app.handler", "code": {"files": {"app.py": ""}}, **fields},
    })  # fmt: skip


@pytest.mark.parametrize(
    ("total", "weights", "expected"),
    [
        (4, {"1": 0.75, "2": 0.25}, {"1": 3, "2": 1}),
        (5, {"1": 0.5, "2": 0.5}, {"1": 3, "2": 2}),  # the remainder to the heavier (here: the same) share first
        (3, {"1": 0.9, "2": 0.1}, {"1": 3}),  # 2.7 and 0.3: the remainder to the larger fraction
        (1, {"1": 1.0}, {"1": 1}),
        (0, {"1": 1.0}, {}),
        (10, {"1": 0.34, "2": 0.33, "3": 0.33}, {"1": 4, "2": 3, "3": 3}),
    ],
)
def test_shares_add_up_to_the_total(total: int, weights: Mapping[str, float], expected: dict[str, int]) -> None:
    got = provisioning.shares(total, weights)
    assert got == expected
    assert sum(got.values()) == total


def test_requested_combines_the_version_its_aliases_and_latest() -> None:
    s = spec(concurrency={"provisioned": 2, "provisionedConfigs": {"3": 1, "live": 4}})
    routes = {"live": {"3": 0.75, "4": 0.25}}
    assert provisioning.requested(s, "3", "4", routes.get) == 1 + 3
    assert provisioning.requested(s, "4", "4", routes.get) == 1 + 2  # live's share, and $LATEST's
    assert provisioning.requested(s, "2", "4", routes.get) == 0
    # An alias that does not route (not yet watched, say) provisions nothing rather than something wrong.
    assert provisioning.requested(s, "3", "4", lambda alias: None) == 1


def test_status_is_ready_once_allocated() -> None:
    assert provisioning.Status(3, 2, 2).state == provisioning.IN_PROGRESS
    assert provisioning.Status(3, 3, 2).state == provisioning.READY
    assert (provisioning.Status(1, 1, 1) + provisioning.Status(2, 0, 0)).state == provisioning.IN_PROGRESS


def test_registry_provisioned_follows_latest_and_aliases() -> None:
    s = spec(concurrency={"provisioned": 1, "provisionedConfigs": {"live": 2}})
    registry = Registry()
    versions = {n: FunctionVersion(s, n, "/x", "x") for n in ("1", "2")}
    registry.replace_function("default", "f", {**versions, naming.LATEST: versions["2"]})
    registry.put_alias("default", "f", "live", {"1": 1.0})
    assert registry.provisioned(versions["1"]) == 2
    assert registry.provisioned(versions["2"]) == 1


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"concurrency": {"provisionedConfigs": {"$LATEST": 1}}}, "spec.concurrency.provisionedConfigs.$LATEST"),
        ({"concurrency": {"provisionedConfigs": {"01": 1}}}, "spec.concurrency.provisionedConfigs.01"),
        ({"concurrency": {"provisionedConfigs": {"live": 0}}}, "must be an integer of at least 1"),
        ({"concurrency": {"provisionedConfigs": {"live": True}}}, "must be an integer of at least 1"),
        ({"concurrency": {"reserved": 2, "provisionedConfigs": {"1": 2, "live": 1}}}, "must not exceed"),
        ({"concurrency": {"provisionedConfigs": {"1": 1}}, "snapStart": {"applyOn": "PublishedVersions"}},
         "spec.snapStart: SnapStart and provisioned concurrency"),
    ],
)  # fmt: skip
def test_bad_configs_are_refused(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(specs.SpecError) as refused:
        spec(**fields)
    assert any(problem in e for e in refused.value.errors), refused.value.errors


async def test_instances_are_provisioned_while_wanted_and_served_first() -> None:
    version = FunctionVersion(spec(), "1", "/x", "x")
    dispatcher = Dispatcher(on_demand=lambda key: None, clock=ManualClock())
    dispatcher.provision(version, 2)
    streams = [Stream() for _ in range(3)]
    instances = [dispatcher.connect(version, f"i{n}", s.send) for n, s in enumerate(streams)]
    assert [i.kind for i in instances] == [naming.PROVISIONED_CONCURRENCY] * 2 + [naming.ON_DEMAND]
    # A reconnecting on-demand runtime stays on-demand although a provisioned place is free (its env says so).
    dispatcher.disconnect(instances[0])
    again = dispatcher.connect(version, "i2", streams[2].send, naming.ON_DEMAND)
    assert again.kind == naming.ON_DEMAND
    back = dispatcher.connect(version, "i0", streams[0].send, naming.PROVISIONED_CONCURRENCY)
    assert back.kind == naming.PROVISIONED_CONCURRENCY
    for instance in (back, instances[1], again):
        await dispatcher.ready(instance)
    snapshot = dispatcher.snapshot(version.key)
    assert snapshot is not None and (snapshot.requested, snapshot.allocated, snapshot.available) == (2, 2, 2)
    # The on-demand one was idle last (on top of the stack), yet the provisioned ones are taken first.
    for expected in (instances[1], back):
        invocation = Invocation(f"r-{expected.id}", b"{}", "arn")
        await dispatcher.submit(version, invocation)
        assert expected.busy is invocation
    assert again.busy is None
    # Provisioned concurrency lowered: the extra provisioned instance becomes an on-demand one (it may retire).
    dispatcher.provision(version, 1)
    assert sum(i.provisioned for i in (back, instances[1])) == 1


def test_provisioned_instances_never_expire_and_missing_ones_are_started() -> None:
    version = FunctionVersion(spec(), "1", "/x", "x")
    dispatcher = Dispatcher(on_demand=lambda key: None, clock=ManualClock())
    dispatcher.provision(version, 2)
    for n in range(3):
        dispatcher.connect(version, f"i{n}", Stream().send)
    snapshot = dispatcher.snapshot(version.key)
    assert snapshot is not None
    # Connected but never ready: not idle. The scaler's state leaves provisioned ones out of what may expire.
    state = state_of(snapshot)
    assert state.provisioned == 2
    policy = scaling.Policy(provisioned=2, idle_seconds=1)
    idle = scaling.State(active=0, connected=3, starting=0, idle_since=(("i2", 0.0),), provisioned=2)
    assert scaling.decide(idle, policy, 10.0).stop == ("i2",)
    # Two on-demand instances, but two provisioned ones wanted: two more are started (an on-demand one cannot
    # become provisioned), and the on-demand ones retire once idle long enough.
    mixed = scaling.State(active=0, connected=2, starting=0, idle_since=(("a", 0.0), ("b", 0.0)), provisioned=0)
    decision = scaling.decide(mixed, policy, 0.5)
    assert decision.start == 2 and decision.stop == ()
