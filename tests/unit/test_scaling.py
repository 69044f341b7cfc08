"""The scaling decision, with time passed in as a value (no sleeps)."""

from __future__ import annotations

from kambda.gateway.scaling import Decision, Policy, State, decide, still_to_reconnect

NOW = 1000.0


def test_scale_from_zero_starts_one_per_waiting_invocation() -> None:
    assert decide(State(active=3, connected=0, starting=0), Policy(), NOW) == Decision(desired=3, start=3)


def test_starting_instances_count_as_capacity() -> None:
    assert decide(State(active=3, connected=1, starting=2), Policy(), NOW).start == 0


def test_cap_limits_instances() -> None:
    assert decide(State(active=40, connected=0, starting=0), Policy(cap=4), NOW) == Decision(desired=4, start=4)
    assert decide(State(active=40, connected=4, starting=0), Policy(cap=4), NOW).start == 0


def test_burst_limits_one_step() -> None:
    assert decide(State(active=100, connected=0, starting=0), Policy(burst=10), NOW).start == 10


def test_per_instance_concurrency() -> None:
    assert decide(State(active=5, connected=0, starting=0), Policy(per_instance=2), NOW).desired == 3


def test_provisioned_instances_are_kept_without_load() -> None:
    decision = decide(State(active=0, connected=0, starting=0), Policy(provisioned=2), NOW)
    assert decision == Decision(desired=2, start=2)
    idle = (("a", NOW - 999), ("b", NOW - 999))
    assert decide(State(0, 2, 0, idle), Policy(provisioned=2, idle_seconds=1), NOW).stop == ()


def test_idle_instances_stop_only_after_the_window() -> None:
    idle = (("old", NOW - 301), ("fresh", NOW - 10))
    decision = decide(State(active=0, connected=2, starting=0, idle_since=idle), Policy(idle_seconds=300), NOW)
    assert decision.stop == ("old",)


def test_scale_to_zero() -> None:
    idle = (("a", NOW - 5), ("b", NOW - 6))
    decision = decide(State(active=0, connected=2, starting=0, idle_since=idle), Policy(idle_seconds=5), NOW)
    assert set(decision.stop) == {"a", "b"} and decision.desired == 0


def test_expired_idle_instances_are_kept_while_demand_needs_them() -> None:
    idle = (("a", NOW - 100), ("b", NOW - 200))
    decision = decide(State(active=2, connected=3, starting=0, idle_since=idle), Policy(idle_seconds=5), NOW)
    assert decision.stop == ("b",)  # keep 2 for the 2 active; the oldest idle goes first


def test_zero_cap_never_starts() -> None:
    assert decide(State(active=5, connected=0, starting=0), Policy(cap=0), NOW).start == 0


def test_an_instance_that_never_connects_is_withdrawn_after_the_idle_window() -> None:
    starting = (("pending-1", NOW - 10),)
    assert decide(State(active=0, connected=0, starting=1, idle_since=starting), Policy(idle_seconds=5), NOW).stop == (
        "pending-1",
    )
    assert decide(State(active=1, connected=0, starting=1, idle_since=starting), Policy(idle_seconds=5), NOW).stop == ()


def test_stalled_instances_are_not_capacity() -> None:
    """An instance that gave work back (its runtime never came to /next) must not stop the scaler starting one."""
    state = State(active=1, connected=1, starting=0, stalled_since=(("s", NOW),))
    assert decide(state, Policy(), NOW).start == 1
    assert decide(State(active=1, connected=1, starting=0), Policy(), NOW).start == 0


def test_stalled_instances_are_stopped_after_the_idle_window_only() -> None:
    state = State(active=0, connected=1, starting=0, stalled_since=(("s", NOW),))
    assert decide(state, Policy(idle_seconds=10), NOW + 9.9).stop == ()
    assert decide(state, Policy(idle_seconds=10), NOW + 10).stop == ("s",)


def test_stalled_instances_still_count_against_the_cap_and_make_room_when_it_is_full() -> None:
    """Reserved concurrency 3 with one stalled instance: no fourth instance; the stalled one goes instead."""
    state = State(active=3, connected=3, starting=0, stalled_since=(("s", NOW),))
    decision = decide(state, Policy(cap=3, idle_seconds=300), NOW)
    assert decision.start == 0 and decision.stop == ("s",)
    below_cap = decide(state, Policy(cap=4, idle_seconds=300), NOW)
    assert below_cap.start == 1 and below_cap.stop == ()


def test_stalled_instances_are_not_stopped_when_only_the_burst_holds_starts_back() -> None:
    state = State(active=5, connected=1, starting=0, stalled_since=(("s", NOW),))
    decision = decide(state, Policy(cap=100, burst=2, idle_seconds=300), NOW)
    assert decision.start == 2 and decision.stop == ()


def test_instances_left_running_that_reconnected_first_are_not_awaited_again() -> None:
    left = ["pending-a", "pending-b", "pending-c"]
    assert still_to_reconnect(left, 0) == left
    assert still_to_reconnect(left, 1) == ["pending-b", "pending-c"]
    assert still_to_reconnect(left, 3) == [] == still_to_reconnect(left, 5)
