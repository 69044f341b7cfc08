"""The dispatcher in-process: who gets an invocation, and that nobody gets it twice.

Instances' streams are the dispatcher's only I/O; here they are lists that record what was written (or raise, for a
broken stream).
"""

from __future__ import annotations

from kambda import specs
from kambda.gateway.dispatching import Dispatcher, Instance, Invocation, Pool
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


def invocation(request_id: str) -> Invocation:
    return Invocation(request_id=request_id, payload=b"{}", invoked_arn="arn")


async def test_a_failed_write_hands_the_invocation_to_exactly_one_other_instance() -> None:
    demands: list[Pool] = []
    dispatcher = Dispatcher(on_demand=demands.append)
    fv = version()
    good, broken = Stream(), Stream(broken=True)
    first = dispatcher.connect(fv, "good", good.send)
    second = dispatcher.connect(fv, "broken", broken.send)
    await dispatcher.ready(first)
    await dispatcher.ready(second)  # the broken one is on top of the idle stack: tried first
    inv = invocation("r1")
    await dispatcher.submit(fv, inv)
    pool = dispatcher.pool(fv)
    assert good.request_ids() == ["r1"]
    assert list(pool.pending) == []  # it did not also stay queued (it used to: a double assignment)
    assert "broken" not in pool.instances and pool.busy == 1


async def test_a_failed_write_when_nothing_else_is_idle_queues_it_once() -> None:
    demands: list[Pool] = []
    dispatcher = Dispatcher(on_demand=demands.append)
    fv = version()
    broken = Stream(broken=True)
    await dispatcher.ready(dispatcher.connect(fv, "broken", broken.send))
    await dispatcher.submit(fv, invocation("r1"))
    pool = dispatcher.pool(fv)
    assert [i.request_id for i in pool.pending] == ["r1"] and pool.busy == 0
    assert demands  # the scaler was asked for an instance


async def test_declined_work_goes_first_to_another_instance_and_the_decliner_is_not_capacity() -> None:
    dispatcher = Dispatcher(on_demand=lambda pool: None)
    fv = version()
    a, b = Stream(), Stream()
    slow = dispatcher.connect(fv, "slow", a.send)
    await dispatcher.ready(slow)
    await dispatcher.submit(fv, invocation("r1"))
    await dispatcher.submit(fv, invocation("r2"))  # nothing idle: queued
    pool = dispatcher.pool(fv)
    assert a.request_ids() == ["r1"]
    dispatcher.finish(slow, _ok())
    await dispatcher.ready(slow)  # `and_next`: the agent asked on its runtime's behalf, and got r2
    assert a.request_ids() == ["r1", "r2"]
    await dispatcher.decline(slow, "r2")  # ... but the runtime never came to /next
    assert [i.request_id for i in pool.pending] == ["r2"] and pool.busy == 0
    assert [i.id for i in pool.stalled()] == ["slow"] and slow not in pool.idle
    other = dispatcher.connect(fv, "other", b.send)
    await dispatcher.ready(other)
    assert b.request_ids() == ["r2"]
    await dispatcher.ready(slow)  # the runtime asked at last: capacity again
    assert pool.stalled() == [] and pool.idle == [slow]


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
    assert dispatcher.pool(fv).stalled() == []


async def test_a_stalled_instance_can_be_retired() -> None:
    dispatcher, _, stream, instance = await running("r1")
    await dispatcher.decline(instance, "r1")
    assert await dispatcher.retire(instance, "idle")
    assert stream.written[-1].HasField("stop")
    assert not await dispatcher.retire(instance, "idle")  # until its stream ends, it is not stopped (or counted) twice
    assert sum(m.HasField("stop") for m in stream.written) == 1


def _ok():  # type: ignore[no-untyped-def]
    from kambda.gateway.dispatching import Outcome

    return Outcome(b"{}", None)
