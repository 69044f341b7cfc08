"""The dispatcher in-process: who gets an invocation, and that nobody gets it twice; its timers on a manual clock.

Instances' streams are the dispatcher's only I/O; here they are lists that record what was written (or raise, for a
broken stream). Time is a ManualClock: a timer fires when the test moves the clock past it, never by waiting.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from kambda import specs
from kambda.gateway.dispatching import GRACE_SECONDS, Dispatcher, Instance, Invocation, Moved, NoInstance, Outcome
from kambda.gateway.registry import FunctionVersion
from kambda.runtime.rpc import runtime_pb2 as pb


def version() -> FunctionVersion:
    spec = specs.parse_function(
        {
            "apiVersion": "kambda.dev/v1alpha1",
            "kind": "Function",
            "metadata": {"name": "f"},
            "spec": {"runtime": "python3.11", "handler": "app.handler", "code": {"files": {"app.py": ""}}},
        }
    )
    return FunctionVersion(spec=spec, version="$LATEST", code_dir="/nonexistent", code_sha256="x")


class Stream:
    def __init__(self, *, broken: bool = False) -> None:
        self.written: list[pb.GatewayMessage] = []
        self.broken = broken

    async def send(self, message: pb.GatewayMessage) -> None:
        if self.broken:
            raise ConnectionError("stream gone")
        self.written.append(message)

    def request_ids(self) -> list[str]:
        return [m.invocation.request_id for m in self.written if m.HasField("invocation")]


class ManualTimer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """Now, and timers that fire only when `advance` moves the clock past them (in their order)."""

    def __init__(self) -> None:
        self.time = 1000.0
        self._timers: list[tuple[float, int, ManualTimer, Callable[..., None], tuple[Any, ...]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self.time

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> ManualTimer:
        timer = ManualTimer()
        heapq.heappush(self._timers, (self.time + delay, next(self._order), timer, callback, args))
        return timer

    async def advance(self, seconds: float) -> None:
        target = self.time + seconds
        while self._timers and self._timers[0][0] <= target:
            due, _, timer, callback, args = heapq.heappop(self._timers)
            self.time = due
            if not timer.cancelled:
                callback(*args)
                await asyncio.sleep(0)  # let what the callback started run (a Stop being sent)
        self.time = target


def invocation(request_id: str) -> Invocation:
    return Invocation(request_id=request_id, payload=b"{}", invoked_arn="arn")


async def test_a_failed_write_hands_the_invocation_to_exactly_one_other_instance() -> None:
    demands: list[tuple[str, str]] = []
    dispatcher = Dispatcher(on_demand=demands.append)
    fv = version()
    good, broken = Stream(), Stream(broken=True)
    first = dispatcher.connect(fv, "good", good.send)
    second = dispatcher.connect(fv, "broken", broken.send)
    await dispatcher.ready(first)
    await dispatcher.ready(second)  # the broken one is on top of the idle stack: tried first
    inv = invocation("r1")
    await dispatcher.submit(fv, inv)
    pool = dispatcher.snapshot(fv.key)
    assert pool is not None and good.request_ids() == ["r1"]
    assert pool.pending == 0  # it did not also stay queued (it used to: a double assignment)
    assert pool.connected == 1 and pool.busy == 1  # the broken one is gone


async def test_a_failed_write_when_nothing_else_is_idle_queues_it_once() -> None:
    demands: list[tuple[str, str]] = []
    dispatcher = Dispatcher(on_demand=demands.append)
    fv = version()
    broken = Stream(broken=True)
    await dispatcher.ready(dispatcher.connect(fv, "broken", broken.send))
    await dispatcher.submit(fv, invocation("r1"))
    pool = dispatcher.snapshot(fv.key)
    assert pool is not None and pool.pending == 1 and pool.busy == 0
    assert demands == [fv.key]  # the scaler was asked for an instance


async def test_declined_work_goes_first_to_another_instance_and_the_decliner_is_not_capacity() -> None:
    dispatcher = Dispatcher(on_demand=lambda pool: None)
    fv = version()
    a, b = Stream(), Stream()
    slow = dispatcher.connect(fv, "slow", a.send)
    await dispatcher.ready(slow)
    await dispatcher.submit(fv, invocation("r1"))
    await dispatcher.submit(fv, invocation("r2"))  # nothing idle: queued
    assert a.request_ids() == ["r1"]
    dispatcher.finish(slow, _ok())
    await dispatcher.ready(slow)  # `and_next`: the agent asked on its runtime's behalf, and got r2
    assert a.request_ids() == ["r1", "r2"]
    await dispatcher.decline(slow, "r2")  # ... but the runtime never came to /next
    pool = dispatcher.snapshot(fv.key)
    assert pool is not None and pool.pending == 1 and pool.busy == 0
    assert [i for i, _ in pool.stalled] == ["slow"] and pool.idle == ()
    other = dispatcher.connect(fv, "other", b.send)
    await dispatcher.ready(other)
    assert b.request_ids() == ["r2"]
    await dispatcher.ready(slow)  # the runtime asked at last: capacity again
    pool = dispatcher.snapshot(fv.key)
    assert pool is not None and pool.stalled == () and [i for i, _ in pool.idle] == ["slow"]


async def running(request_id: str) -> tuple[Dispatcher, FunctionVersion, Stream, Instance]:
    """A dispatcher with one connected instance that is running `request_id`."""
    dispatcher = Dispatcher(on_demand=lambda pool: None)
    fv = version()
    stream = Stream()
    instance = dispatcher.connect(fv, "i", stream.send)
    await dispatcher.ready(instance)
    await dispatcher.submit(fv, invocation(request_id))
    return dispatcher, fv, stream, instance


async def test_a_stale_decline_changes_nothing() -> None:
    dispatcher, fv, _, instance = await running("r1")
    await dispatcher.decline(instance, "some-other-request")
    assert instance.busy is not None and instance.busy.request_id == "r1"
    pool = dispatcher.snapshot(fv.key)
    assert pool is not None and pool.stalled == () and pool.busy == 1


async def test_a_stalled_instance_can_be_retired() -> None:
    dispatcher, _, stream, instance = await running("r1")
    await dispatcher.decline(instance, "r1")
    assert await dispatcher.retire(instance, "idle")
    assert stream.written[-1].HasField("stop")
    assert not await dispatcher.retire(instance, "idle")  # until its stream ends, it is not stopped (or counted) twice
    assert sum(m.HasField("stop") for m in stream.written) == 1


def _ok() -> Outcome:
    return Outcome(b"{}", None)


# ---- on a manual clock ---------------------------------------------------------------------------------------


def clocked(queue_timeout: float = 120.0) -> tuple[Dispatcher, ManualClock, list[tuple[str, str]]]:
    clock = ManualClock()
    demands: list[tuple[str, str]] = []
    return Dispatcher(on_demand=demands.append, queue_timeout=queue_timeout, clock=clock), clock, demands


async def test_an_invocation_no_instance_takes_fails_at_the_queue_timeout_and_not_before() -> None:
    dispatcher, clock, demands = clocked(queue_timeout=30)
    fv = version()
    waiting = invocation("r1")
    await dispatcher.submit(fv, waiting)
    assert demands == [fv.key]  # the scaler is asked for an instance at once
    await clock.advance(29.9)
    assert not waiting.future.done()
    await clock.advance(0.2)
    with pytest.raises(NoInstance):
        waiting.future.result()
    pool = dispatcher.snapshot(fv.key)
    assert pool is not None and pool.pending == 0  # and it is no longer queued


async def test_an_instance_taken_before_the_timeout_cancels_it() -> None:
    dispatcher, clock, _ = clocked(queue_timeout=12)
    fv = version()
    waiting = invocation("r1")
    await dispatcher.submit(fv, waiting)
    stream = Stream()
    await clock.advance(10)
    await dispatcher.ready(dispatcher.connect(fv, "late", stream.send))
    assert stream.request_ids() == ["r1"]
    await clock.advance(5)  # past the queue timeout (12 s), before the deadline (3 s + grace from 10 s)
    assert not waiting.future.done()


async def test_an_instance_silent_past_its_deadline_fails_the_invocation_and_is_stopped() -> None:
    dispatcher, clock, _ = clocked()
    fv = version()
    stream = Stream()
    instance = dispatcher.connect(fv, "silent", stream.send)
    await dispatcher.ready(instance)
    running = invocation("r1")
    await dispatcher.submit(fv, running)
    deadline = fv.spec.timeout_seconds + GRACE_SECONDS
    await clock.advance(deadline - 0.1)
    assert not running.future.done()
    await clock.advance(0.2)
    outcome = running.future.result()
    assert outcome.error_type == "Sandbox.Timedout"
    assert stream.written[-1].HasField("stop")  # retired: it never runs anything again
    await dispatcher.submit(fv, invocation("r2"))
    assert stream.request_ids() == ["r1"]


async def test_an_answer_in_time_cancels_the_overdue_timer() -> None:
    dispatcher, clock, _ = clocked()
    fv = version()
    stream = Stream()
    instance = dispatcher.connect(fv, "i", stream.send)
    await dispatcher.ready(instance)
    running = invocation("r1")
    await dispatcher.submit(fv, running)
    dispatcher.finish(instance, _ok())
    await clock.advance(fv.spec.timeout_seconds + GRACE_SECONDS + 1)
    assert running.future.result().error_type is None
    assert not any(m.HasField("stop") for m in stream.written)


async def test_a_failed_assign_requeues_first_and_the_next_instance_takes_it() -> None:
    dispatcher, clock, _ = clocked(queue_timeout=30)
    fv = version()
    await dispatcher.submit(fv, invocation("r1"))
    await dispatcher.submit(fv, invocation("r2"))
    broken = Stream(broken=True)
    await clock.advance(20)
    await dispatcher.ready(dispatcher.connect(fv, "broken", broken.send))  # r1 fails to go out: back in front
    pool = dispatcher.snapshot(fv.key)
    assert pool is not None and pool.pending == 2 and pool.connected == 0
    good = Stream()
    await clock.advance(20)  # r1's first wait has passed 30 s: re-queued, its wait started again
    await dispatcher.ready(dispatcher.connect(fv, "good", good.send))
    assert good.request_ids() == ["r1"]  # first, not behind r2


async def test_idle_since_and_stalled_since_come_from_the_clock() -> None:
    dispatcher, clock, _ = clocked()
    fv = version()
    instance = dispatcher.connect(fv, "i", Stream().send)
    await clock.advance(5)
    await dispatcher.ready(instance)
    pool = dispatcher.snapshot(fv.key)
    assert pool is not None and pool.idle == (("i", clock.time),)


async def test_a_hand_over_fails_waiting_work_with_moved_and_gives_back_idle_instances() -> None:
    dispatcher, _, _ = clocked()
    fv = version()
    queued = invocation("queued")
    await dispatcher.submit(fv, queued)  # no instance yet: it waits
    assert dispatcher.hand_over(lambda function: True) == [] and not queued.future.done()  # still ours
    assert dispatcher.hand_over(lambda function: False) == []
    with pytest.raises(Moved):  # its caller sends it to the new owner; nothing of it ran
        queued.future.result()

    busy_stream, idle_stream = Stream(), Stream()
    busy = dispatcher.connect(fv, "busy", busy_stream.send)
    await dispatcher.ready(busy)
    running = invocation("running")
    await dispatcher.submit(fv, running)
    idle = dispatcher.connect(fv, "idle", idle_stream.send)
    await dispatcher.ready(idle)
    assert dispatcher.hand_over(lambda function: False) == [idle]  # the busy one finishes here first
    assert idle.retired and not busy.retired and not running.future.done()
    await dispatcher.submit(fv, invocation("after"))  # an idle instance handed over takes nothing more here
    assert idle_stream.request_ids() == []


async def test_expected_instances_are_withdrawn_once_and_adoption_replaces_them() -> None:
    dispatcher, clock, demands = clocked()
    fv = version()
    await dispatcher.submit(fv, invocation("r1"))
    dispatcher.expect(fv.key, ["a", "b"], clock.now())
    assert dispatcher.withdraw(fv.key, "a") and not dispatcher.withdraw(fv.key, "a")
    assert demands.count(fv.key) == 2  # work still waits: the scaler is woken again
    dispatcher.adopt(fv.key, ["p1", "p2", "p3"], clock.now())
    pool = dispatcher.snapshot(fv.key)
    assert pool is not None and [i for i, _ in pool.starting] == ["p1", "p2", "p3"]
    dispatcher.connect(fv, "pod-x", Stream().send)  # an unnamed one takes the oldest placeholder's place
    pool = dispatcher.snapshot(fv.key)
    assert pool is not None and len(pool.starting) == 2 and pool.connected == 1
