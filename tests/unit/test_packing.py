"""Packed sandboxes' placement (pure): spawn into running pods first, count what pods on their way will host, free a
pod only when none of its sandboxes is left; with one slot, exactly one instance per pod."""

from __future__ import annotations

import json

from kambda import naming
from kambda.gateway.packing import Placement, place, released
from kambda.specs import parse_function, slots_per_pod
from tests.workdir import function_manifest


def test_ids_name_their_pod_and_slot() -> None:
    assert naming.sandbox_id("fn-v1-abc-xyz", 0) == "fn-v1-abc-xyz"
    assert naming.sandbox_id("fn-v1-abc-xyz", 3) == "fn-v1-abc-xyz.3"
    assert naming.pod_of("fn-v1-abc-xyz.3") == "fn-v1-abc-xyz" and naming.slot_of("fn-v1-abc-xyz.3") == 3
    assert naming.slot_of("fn-v1-abc-xyz") == 0 and naming.slot_of("pod.x") == -1


def test_from_zero_pods_are_started_for_all_of_it_at_once() -> None:
    assert place(40, 8, [], [], [], []) == Placement(new_pods=5)
    assert place(41, 8, [], [], [], []) == Placement(new_pods=6)
    assert place(0, 8, [], [], [], []) == Placement()


def test_one_slot_is_one_pod_per_instance() -> None:
    assert place(3, 1, ["a"], ["a"], ["a"], []) == Placement(new_pods=3)
    assert released(["a", "b"], ["c"], 1) == ["a", "b"]


def test_running_pods_with_free_slots_are_filled_first_the_fullest_first() -> None:
    connected = ["p", "p.1", "q"]
    placement = place(3, 4, connected, connected, connected, [])
    assert placement.spawns == (("p", ("p.2", "p.3")), ("q", ("q.1",)))
    assert placement.new_pods == 0 and placement.spawned == 3


def test_slots_being_spawned_are_taken_and_retiring_pods_are_not_asked() -> None:
    # p.1 is on its way (spawned, not connected yet); r's only sandbox is retiring.
    placement = place(8, 4, ["p", "r"], ["p"], ["p"], ["p.1"])
    assert placement.spawns == (("p", ("p.2", "p.3")),)
    assert placement.new_pods == 2  # 6 more: 4 + 2 in new pods


def test_pods_on_their_way_host_their_share_once_they_connect() -> None:
    # Two placeholders: two pods starting, each bringing 7 more once its first sandbox is up.
    assert place(14, 8, [], [], [], ["pending-a", "pending-b"]) == Placement(new_pods=0)
    assert place(15, 8, [], [], [], ["pending-a", "pending-b"]) == Placement(new_pods=1)
    # A spawn into a pod with no sandbox left offers nothing.
    assert place(7, 8, [], [], [], ["gone.3"]) == Placement(new_pods=1)


def test_a_pod_is_freed_once_none_of_its_sandboxes_is_left() -> None:
    assert released(["p.1", "p.2"], ["p", "q"], 4) == []
    assert released(["p.1", "p"], ["q"], 4) == ["p"]
    assert released(["pending-a"], ["p"], 4) == ["pending-a"]  # a pod that never came is its own unit
    assert released(["p.1"], ["p.2"], 4) == []  # a sandbox still starting keeps its pod


def test_slots_come_from_memory_unless_the_function_says() -> None:
    def slots(**spec: object) -> int:
        return slots_per_pod(parse_function(json.loads(function_manifest("f", "", **spec))))

    assert slots() == 8  # 128 MB
    assert slots(memoryMB=512) == 2 and slots(memoryMB=1024) == 1 and slots(memoryMB=3000) == 1
    assert slots(scaling={"sandboxesPerPod": 3}) == 3
    assert slots(memoryMB=2048, scaling={"sandboxesPerPod": 2}) == 2


def test_a_pod_whose_first_runtime_is_not_up_defers_its_free_slots() -> None:
    # p connected but has not asked for work: no Spawn may be written on it yet, and no pod is started for its room.
    assert place(7, 8, ["p"], ["p"], [], []) == Placement(new_pods=0)
    assert place(9, 8, ["p"], ["p"], [], []) == Placement(new_pods=1)
