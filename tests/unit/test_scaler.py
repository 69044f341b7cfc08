"""The scaler loop in-process, on explicit times: it asks the backend for instances when work waits, retires them
after their idle window, withdraws instances that never came, and leaves alone the versions another replica owns.

The backend is the scaler's boundary to the world (pods, processes); here it records what it was asked."""

from __future__ import annotations

from kambda.gateway.dispatching import Dispatcher, Outcome
from kambda.gateway.metrics import Metrics
from kambda.gateway.registry import FunctionVersion
from kambda.gateway.scaler import Scaler
from tests.unit.test_dispatching import ManualClock, Stream, invocation, version


class RecordingBackend:
    name = "recording"

    def __init__(self, running: int = 0, slots: int = 1) -> None:
        self._slots = slots
        self.started: list[int] = []
        self.stopped: list[list[str]] = []
        self.adopted: list[str] = []
        self._running = running
        self._ids = 0

    def runtimes(self) -> list[str]:
        return ["python3.11"]

    async def open(self, on_gone: object, grpc_target: str) -> None:
        pass

    async def adopt(self, version: FunctionVersion) -> list[str]:
        self.adopted.append(version.version)
        return [f"left-{i}" for i in range(self._running)]

    def slots(self, version: FunctionVersion) -> int:
        return self._slots

    async def start_instances(self, version: FunctionVersion, count: int) -> list[str]:
        self.started.append(count)
        self._ids += count
        return [f"new-{self._ids - i}" for i in range(count)]

    async def stop_instances(self, version: FunctionVersion, instance_ids: list[str]) -> None:
        self.stopped.append(sorted(instance_ids))

    async def close(self) -> None:
        pass


def setup(
    owned: bool = True, running: int = 0, slots: int = 1
) -> tuple[Dispatcher, Scaler, RecordingBackend, ManualClock, list[bool]]:
    clock = ManualClock()
    ownership = [owned]
    backend = RecordingBackend(running, slots)
    dispatcher = Dispatcher(on_demand=lambda key: None, clock=clock)
    scaler = Scaler(dispatcher, backend, Metrics(), gateway_cap=100, owned=lambda function: ownership[0],
                    clock=clock.now)  # fmt: skip
    return dispatcher, scaler, backend, clock, ownership


async def test_work_waiting_starts_one_instance_and_the_idle_window_stops_it() -> None:
    dispatcher, scaler, backend, clock, _ = setup()
    fv = version()
    waiting = invocation("r1")
    await dispatcher.submit(fv, waiting)
    await scaler.reconcile(clock.now())
    assert backend.started == [1]
    await scaler.reconcile(clock.now())
    assert backend.started == [1]  # the one asked for counts: not asked again
    stream = Stream()
    instance = dispatcher.connect(fv, "new-1", stream.send)
    await dispatcher.ready(instance)
    assert stream.request_ids() == ["r1"]
    dispatcher.finish(instance, Outcome(b"{}", None))
    await dispatcher.ready(instance)
    idle = fv.spec.scaling.idle_seconds
    await clock.advance(idle - 1)
    await scaler.reconcile(clock.now())
    assert backend.stopped == []  # kept warm for its idle window
    await clock.advance(1)
    await scaler.reconcile(clock.now())
    assert backend.stopped == [] and stream.written[-1].HasField("stop")  # asked to stop, still stopping
    dispatcher.disconnect(instance)  # its stream ended: the agent stopped it
    await scaler.reconcile(clock.now())
    assert backend.stopped == [["new-1"]]  # only now is what it ran in freed (on Kubernetes: its pod deleted)


async def test_an_instance_that_never_comes_is_withdrawn_after_the_idle_window() -> None:
    dispatcher, scaler, backend, clock, _ = setup()
    fv = version()
    dispatcher.pool(fv)  # the version is known; nothing waits
    await scaler.reconcile(clock.now())  # the first look adopts what runs (nothing)
    dispatcher.expect(fv.key, ["pending-x"], clock.now())  # asked of the backend (a pod never scheduled)
    await clock.advance(fv.spec.scaling.idle_seconds)
    await scaler.reconcile(clock.now())
    assert backend.stopped == [["pending-x"]]
    snapshot = dispatcher.snapshot(fv.key)
    assert snapshot is not None and snapshot.starting == ()


async def test_a_version_another_replica_owns_is_left_alone_and_adopted_when_it_comes_back() -> None:
    dispatcher, scaler, backend, clock, ownership = setup(owned=False, running=2)
    fv = version()
    for i in range(3):
        await dispatcher.submit(fv, invocation(f"r{i}"))
    await scaler.reconcile(clock.now())
    assert backend.started == [] and backend.adopted == []  # not ours: no decision at all
    ownership[0] = True
    await scaler.reconcile(clock.now())
    # Ours now: what runs (2 pods another owner started) is adopted first, so only the third is started.
    assert backend.adopted == ["$LATEST"] and backend.started == [1]
    ownership[0] = False
    await scaler.reconcile(clock.now())
    ownership[0] = True
    await scaler.reconcile(clock.now())
    assert backend.adopted == ["$LATEST", "$LATEST"]  # each time it comes back, looked at afresh


async def test_packed_pods_spawn_into_running_pods_and_are_freed_only_when_empty() -> None:
    dispatcher, scaler, backend, clock, _ = setup(slots=4)
    fv = version()
    for i in range(6):
        await dispatcher.submit(fv, invocation(f"r{i}"))
    await scaler.reconcile(clock.now())
    assert backend.started == [2]  # 6 sandboxes in pods of 4: two pods, not six
    await scaler.reconcile(clock.now())
    assert backend.started == [2]  # the pods on their way bring 3 more each: no third pod
    stream = Stream()
    first = dispatcher.connect(fv, "pod-a", stream.send)  # a pod's first sandbox is named after its pod
    await dispatcher.ready(first)
    await scaler.reconcile(clock.now())
    spawns = [m.spawn for m in stream.written if m.HasField("spawn")]
    assert [list(s.instance_ids) for s in spawns] == [["pod-a.1", "pod-a.2", "pod-a.3"]]
    assert backend.started == [2]  # still no pod beyond the two
    snapshot = dispatcher.snapshot(fv.key)
    assert snapshot is not None and {"pod-a.1", "pod-a.2", "pod-a.3"} <= {i for i, _ in snapshot.starting}
    streams = {}
    for slot in (1, 2, 3):
        streams[slot] = Stream()
        await dispatcher.ready(dispatcher.connect(fv, f"pod-a.{slot}", streams[slot].send))
    pool = dispatcher.pool(fv)
    while any(i.busy for i in pool._instances.values()):  # every invocation answered, the six of them
        for instance in [i for i in pool._instances.values() if i.busy]:
            dispatcher.finish(instance, Outcome(b"{}", None))
            await dispatcher.ready(instance)
    dispatcher.disconnect(pool._instances["pod-a.3"])  # its stream ended on its own (not stopped): no pod freed
    await scaler.reconcile(clock.now())
    assert backend.stopped == []
    await clock.advance(fv.spec.scaling.idle_seconds)
    await scaler.reconcile(clock.now())  # the idle window passed: its sandboxes are sent Stop
    assert all(streams[slot].written[-1].HasField("stop") for slot in (1, 2))
    assert stream.written[-1].HasField("stop")
    assert backend.stopped == [["new-1"]]  # the pod that never came is withdrawn; pod-a waits for its sandboxes
    for instance_id in ("pod-a.1", "pod-a"):
        dispatcher.disconnect(pool._instances[instance_id])
    await scaler.reconcile(clock.now())
    assert backend.stopped == [["new-1"]]  # pod-a.2 has not ended yet: the pod still hosts it
    dispatcher.disconnect(pool._instances["pod-a.2"])
    await scaler.reconcile(clock.now())
    assert backend.stopped == [["new-1"], ["pod-a"]]  # the last sandbox ended: the pod is freed, once
    await scaler.reconcile(clock.now())
    assert backend.stopped == [["new-1"], ["pod-a"]]
