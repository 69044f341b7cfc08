"""The dispatcher: per function version, invocations waiting for an instance and instances waiting for work.

Instances pull. An instance that sends `Next` is handed the oldest pending invocation, or waits in the idle stack
until one arrives; an instance therefore never holds more than its runtime asked for, and a version with no
instances simply queues until the scaler has started one (scale from zero). The dispatcher does no I/O of its own
beyond writing an invocation onto the instance's stream; admission (429s) happens before it, scaling after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from kambda import naming
from kambda.runtime.rpc import runtime_pb2 as pb

from .registry import FunctionVersion

log = logging.getLogger(__name__)
Sender = Callable[[pb.GatewayMessage], Awaitable[None]]


@dataclass
class Outcome:
    """How an invocation ended, as the instance reported it."""

    payload: bytes
    error_type: str | None  # None: success
    report: pb.Report | None = None  # None when the instance never answered
    log_tail: bytes = b""
    instance_id: str = ""


@dataclass(eq=False)
class Invocation:
    request_id: str
    payload: bytes
    invoked_arn: str
    trace_id: str = ""
    client_context: str = ""
    cognito_identity: str = ""
    tail_logs: bool = False
    enqueued_at: float = field(default_factory=time.monotonic)
    future: asyncio.Future[Outcome] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    timer: Timer | None = None  # queued: the wait for an instance; running: the deadline + grace

    def again(self) -> Invocation:
        """The same invocation, to be submitted afresh (a future resolves once)."""
        return Invocation(
            self.request_id, self.payload, self.invoked_arn, self.trace_id, self.client_context,
            self.cognito_identity, self.tail_logs, self.enqueued_at,
        )  # fmt: skip

    def message(self, timeout_seconds: float) -> pb.GatewayMessage:
        return pb.GatewayMessage(
            invocation=pb.Invocation(
                request_id=self.request_id,
                deadline_ms=int((time.time() + timeout_seconds) * 1000),
                invoked_function_arn=self.invoked_arn,
                trace_id=self.trace_id,
                client_context=self.client_context,
                cognito_identity=self.cognito_identity,
                payload=self.payload,
                tail_logs=self.tail_logs,
            )
        )


@dataclass(eq=False)
class Instance:
    """A connected instance. Its fields are the dispatcher's to write (this module); others only hold it."""

    id: str
    pool: Pool
    send: Sender
    connected_at: float
    idle_since: float
    busy: Invocation | None = None
    retired: bool = False
    stalled_since: float | None = None  # declined work its runtime had not asked for: no capacity until Next
    # Lambda's initialization type, decided when it first connected: provisioned instances are served first and
    # never retired for idleness while the version's provisioned concurrency wants them (provisioning.py).
    kind: str = naming.ON_DEMAND
    initialised: bool = False  # its runtime has asked for work at least once
    stopping: bool = False  # sent Stop (not merely moved to another replica): its end frees its place (`ended`)

    @property
    def provisioned(self) -> bool:
        return self.kind == naming.PROVISIONED_CONCURRENCY


@dataclass(frozen=True)
class PoolSnapshot:
    """One version's dispatch state at a moment: what the scaler decides on and the metrics report."""

    version: FunctionVersion
    busy: int  # instances running an invocation
    pending: int  # invocations waiting for an instance
    connected: int  # instances connected (busy, idle or stalled)
    idle: tuple[tuple[str, float], ...]  # (id, monotonic time since idle)
    starting: tuple[tuple[str, float], ...]  # asked of the backend, not yet connected: (id, time asked)
    stalled: tuple[tuple[str, float], ...]  # (id, time since stalled)
    provisioned: tuple[str, ...] = ()  # instances kept for provisioned concurrency
    requested: int = 0  # the version's provisioned concurrency
    allocated: int = 0  # provisioned instances whose runtime has initialised
    available: int = 0  # of those, the ones not stalled
    instances: tuple[str, ...] = ()  # every connected instance (retiring ones too, until their stream ends)
    live: tuple[str, ...] = ()  # of those, the ones not retiring
    askable: tuple[str, ...] = ()  # of those, the ones whose runtime has asked for work: a Spawn can go on them

    @property
    def active(self) -> int:
        """Invocations accepted and not yet answered: the version's concurrency."""
        return self.busy + self.pending


class Pool:
    """One function version's queue and instances; changed only through the Dispatcher."""

    def __init__(self, version: FunctionVersion) -> None:
        self.version = version
        self._pending: deque[Invocation] = deque()
        self._idle: list[Instance] = []  # a stack: the most recently used instance is reused first, so the
        # others age out and the pool shrinks back to what the load needs
        self._instances: dict[str, Instance] = {}
        self._starting: dict[str, float] = {}  # asked of the backend, not yet connected: id -> monotonic time asked
        self._busy = 0
        self._requested = 0  # provisioned concurrency (the scaler's `provision`)
        self._ended: list[str] = []  # instances that were stopped and whose stream has ended (the scaler's `ended`)

    def _provisioned(self) -> list[Instance]:
        return [i for i in self._instances.values() if i.provisioned]

    def snapshot(self) -> PoolSnapshot:
        provisioned = self._provisioned()
        allocated = [i for i in provisioned if i.initialised]
        return PoolSnapshot(
            version=self.version,
            busy=self._busy,
            pending=len(self._pending),
            connected=len(self._instances),
            idle=tuple((i.id, i.idle_since) for i in self._idle),
            starting=tuple(self._starting.items()),
            stalled=tuple((i.id, i.stalled_since) for i in self._instances.values() if i.stalled_since is not None),
            provisioned=tuple(i.id for i in provisioned),
            requested=self._requested,
            allocated=len(allocated),
            available=sum(1 for i in allocated if i.stalled_since is None),
            instances=tuple(self._instances),
            live=tuple(i.id for i in self._instances.values() if not i.retired),
            askable=tuple(i.id for i in self._instances.values() if not i.retired and i.initialised),
        )


class Clock(Protocol):
    """Time for the dispatcher: now, and a callback later. Tests pass a manual one (tests/unit/test_dispatching)."""

    def now(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> Timer: ...


class Timer(Protocol):
    def cancel(self) -> None: ...


class LoopClock:
    """The running event loop's monotonic clock and timers."""

    def now(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> Timer:
        return asyncio.get_running_loop().call_later(delay, callback, *args)


class NoInstance(Exception):
    """No instance took the invocation within the queue timeout (the backend cannot start one)."""


class Moved(Exception):
    """The function's owner changed while the invocation waited here: nothing ran, it goes to the new owner."""


GRACE_SECONDS = 10.0  # beyond the function timeout, before a silent instance's invocation is failed


class Dispatcher:
    """The one owner of dispatch state: every change goes through its methods, on the event loop's thread; the
    scaler and the metrics read `snapshots()` and act through `expect`, `adopt`, `withdraw` and `retire_idle`."""

    def __init__(
        self,
        *,
        on_demand: Callable[[tuple[str, str]], None],
        queue_timeout: float = 120.0,
        clock: Clock | None = None,
        owned: Callable[[str], bool] = lambda function: True,
    ) -> None:
        self._owned = owned  # replicas: whether this one still owns a function (leases.Ownership.is_mine)
        self._pools: dict[tuple[str, str], Pool] = {}
        self._on_demand = on_demand  # the scaler's wake-up: work is waiting and no instance is idle
        self._queue_timeout = queue_timeout
        self._clock: Clock = clock or LoopClock()

    def pool(self, version: FunctionVersion) -> Pool:
        """The version's pool, made on first use; a reloaded version keeps its queue and instances."""
        pool = self._pools.get(version.key)
        if pool is None:
            pool = self._pools[version.key] = Pool(version)
        else:
            pool.version = version
        return pool

    # ---- reading ---------------------------------------------------------------------------------------------

    def snapshots(self) -> list[PoolSnapshot]:
        return [pool.snapshot() for pool in self._pools.values()]

    def snapshot(self, key: tuple[str, str]) -> PoolSnapshot | None:
        pool = self._pools.get(key)
        return None if pool is None else pool.snapshot()

    # ---- the scaler's side -----------------------------------------------------------------------------------

    def expect(self, key: tuple[str, str], instance_ids: list[str], now: float) -> None:
        """Instances asked of the backend: counted as starting until they connect (or are withdrawn)."""
        pool = self._pools.get(key)
        if pool is not None:
            pool._starting.update(dict.fromkeys(instance_ids, now))

    def adopt(self, key: tuple[str, str], instance_ids: list[str], now: float) -> None:
        """What the backend says already runs, on a first look at the version: replaces what was expected."""
        pool = self._pools.get(key)
        if pool is not None:
            pool._starting = dict.fromkeys(instance_ids, now)

    def withdraw(self, key: tuple[str, str], instance_id: str) -> bool:
        """An expected instance that will not come (never scheduled, or gone for good); True if it was expected.
        Wakes the scaler if work is still waiting."""
        pool = self._pools.get(key)
        if pool is None or pool._starting.pop(instance_id, None) is None:
            return False
        if pool._pending:
            self._on_demand(key)
        return True

    def provision(self, version: FunctionVersion, requested: int) -> None:
        """The version's provisioned concurrency (its pool is made if need be, so the scaler starts instances for
        it before any request). Provisioned instances beyond it become on-demand ones: they retire when idle.
        Nothing to do for a version with none and no pool."""
        if not requested and version.key not in self._pools:
            return
        pool = self.pool(version)
        pool._requested = requested
        extra = pool._provisioned()[requested:]
        for instance in extra:
            instance.kind = naming.ON_DEMAND

    async def spawn(self, key: tuple[str, str], via: str, instance_ids: tuple[str, ...], now: float) -> bool:
        """Ask the pod of instance `via` to start sandboxes `instance_ids` beside it (packed sandboxes); they count
        as starting until they connect. False if `via` is gone or retiring (nothing was asked)."""
        pool = self._pools.get(key)
        instance = None if pool is None else pool._instances.get(via)
        if pool is None or instance is None or instance.retired or not instance.initialised:
            return False  # (a stream is written to only once its session is up: its runtime has asked for work)
        # Expected before the message goes: a sandbox that connects first must not take a placeholder's place.
        pool._starting.update(dict.fromkeys(instance_ids, now))
        try:
            await instance.send(pb.GatewayMessage(spawn=pb.Spawn(instance_ids=instance_ids)))
        except Exception as exc:  # its stream is gone: disconnect() cleans up, the scaler places them again
            log.info("spawn through %s not delivered: %s", via, exc)
            for instance_id in instance_ids:
                pool._starting.pop(instance_id, None)
            return False
        return True

    def ended(self, key: tuple[str, str]) -> list[str]:
        """Instances stopped since the last call (for idleness, or unresponsive) whose stream has ended: what they
        held (a pod, once none of its sandboxes is left) can be freed now. Each is reported once."""
        pool = self._pools.get(key)
        if pool is None:
            return []
        ended, pool._ended = pool._ended, []
        return ended

    async def retire_idle(self, key: tuple[str, str], instance_id: str, reason: str) -> bool:
        """Stop a connected idle (or stalled) instance; False if there is none such (it picked up work)."""
        pool = self._pools.get(key)
        instance = None if pool is None else pool._instances.get(instance_id)
        return instance is not None and await self.retire(instance, reason)

    # ---- the caller's side -----------------------------------------------------------------------------------

    async def submit(self, version: FunctionVersion, invocation: Invocation) -> None:
        """Hand the invocation to an idle instance, or queue it; its future resolves with the Outcome."""
        pool = self.pool(version)
        if await self._assign_to_idle(pool, invocation):
            return
        self._queue(pool, invocation)

    async def _assign_to_idle(self, pool: Pool, invocation: Invocation) -> bool:
        while pool._idle:
            if await self._assign(self._take_idle(pool), invocation):
                return True
        return False

    @staticmethod
    def _take_idle(pool: Pool) -> Instance:
        """The most recently used idle instance, provisioned ones first (Lambda spills over to on-demand only when
        every provisioned environment is busy). Without provisioned concurrency, no search: the warm path."""
        if not pool._requested:
            return pool._idle.pop()
        for index in range(len(pool._idle) - 1, -1, -1):
            if pool._idle[index].provisioned:
                return pool._idle.pop(index)
        return pool._idle.pop()

    def _queue(self, pool: Pool, invocation: Invocation, *, first: bool = False) -> None:
        if not self._owned(pool.version.function):
            # Handed over meanwhile (work declined or a failed write, after the hand-over): nothing here will serve
            # it again, so it goes to the new owner at once rather than waiting out the queue timeout.
            if not invocation.future.done():
                invocation.future.set_exception(Moved())
            return
        if first:
            pool._pending.appendleft(invocation)
        else:
            pool._pending.append(invocation)
        invocation.timer = self._clock.call_later(self._queue_timeout, self._expire, pool, invocation)
        self._on_demand(pool.version.key)

    def _expire(self, pool: Pool, invocation: Invocation) -> None:
        try:
            pool._pending.remove(invocation)
        except ValueError:
            return
        if not invocation.future.done():
            invocation.future.set_exception(NoInstance())

    def _overdue(self, instance: Instance, invocation: Invocation) -> None:
        """The agent enforces the deadline; if it has not answered well past it, it is lost: fail and retire it."""
        if instance.busy is not invocation:
            return
        message = b'{"errorType":"Sandbox.Timedout","errorMessage":"the instance stopped answering"}'
        self.finish(instance, Outcome(message, "Sandbox.Timedout"))
        asyncio.get_running_loop().create_task(self.retire(instance, "unresponsive", busy_ok=True))

    def hand_over(self, owned: Callable[[str], bool]) -> list[Instance]:
        """This replica no longer owns some functions: their waiting invocations fail with `Moved` (their callers
        send them to the new owner) and their idle instances are returned, retired here, to be sent there too.
        Busy instances finish what they run; the runtime interface moves them at their next Next."""
        moving: list[Instance] = []
        for pool in self._pools.values():
            if owned(pool.version.function):
                continue
            while pool._pending:
                invocation = pool._pending.popleft()
                if invocation.timer is not None:
                    invocation.timer.cancel()
                if not invocation.future.done():
                    invocation.future.set_exception(Moved())
            for instance in pool._idle:
                instance.retired = True
                moving.append(instance)
            pool._idle.clear()
        return moving

    # ---- the instance's side ---------------------------------------------------------------------------------

    def connect(self, version: FunctionVersion, instance_id: str, send: Sender, claimed: str | None = None) -> Instance:
        """A new stream of an instance. Its initialization type: the one it `claimed` (reconnecting, its runtime
        already started as that; provisioned only while the version still wants one more), else provisioned while
        the version has fewer than it requested, else on-demand (snap-start for SnapStart versions)."""
        pool = self.pool(version)
        if pool._starting.pop(instance_id, None) is None and pool._starting:
            # Backends that cannot name instances in advance (Kubernetes: pods) hand out placeholders; a new
            # instance takes the place of the oldest one.
            del pool._starting[min(pool._starting, key=pool._starting.__getitem__)]
        old = pool._instances.get(instance_id)
        if old is not None:  # the same instance reconnecting: its old stream is dead
            self.disconnect(old)
        now = self._clock.now()
        instance = Instance(instance_id, pool, send, connected_at=now, idle_since=now)
        wants_provisioned = len(pool._provisioned()) < pool._requested
        if version.spec.snap_start:
            instance.kind = naming.SNAP_START
        elif claimed in (None, naming.PROVISIONED_CONCURRENCY) and wants_provisioned:
            instance.kind = naming.PROVISIONED_CONCURRENCY
        pool._instances[instance_id] = instance
        return instance

    async def ready(self, instance: Instance) -> None:
        """The instance's runtime asked for its next invocation."""
        pool = instance.pool
        if instance.retired or instance.busy is not None:
            return
        instance.initialised = True
        instance.stalled_since = None
        while pool._pending:
            invocation = pool._pending.popleft()
            if invocation.future.done():  # its caller went away while it waited
                continue
            if invocation.timer is not None:
                invocation.timer.cancel()
            if not await self._assign(instance, invocation):
                self._queue(pool, invocation, first=True)  # the stream is broken; another instance takes it
            elif pool._pending and not pool._idle:
                # More work waits: the scaler may now spawn into this instance's pod (packed sandboxes) rather
                # than wait for its tick.
                self._on_demand(pool.version.key)
            return
        instance.idle_since = self._clock.now()
        pool._idle.append(instance)

    async def decline(self, instance: Instance, request_id: str) -> None:
        """The instance gave back work its runtime had not asked for: it goes first to another instance."""
        invocation = instance.busy
        if invocation is None or invocation.request_id != request_id:
            return
        pool = instance.pool
        instance.busy = None
        pool._busy -= 1
        instance.stalled_since = self._clock.now()
        if invocation.timer is not None:
            invocation.timer.cancel()
            invocation.timer = None
        if invocation.future.done():
            return
        if not await self._assign_to_idle(pool, invocation):
            self._queue(pool, invocation, first=True)

    def finish(self, instance: Instance, outcome: Outcome) -> None:
        invocation = instance.busy
        if invocation is None:
            log.warning("instance %s reported a result with nothing in flight", instance.id)
            return
        instance.busy = None
        instance.pool._busy -= 1
        instance.idle_since = self._clock.now()
        if invocation.timer is not None:
            invocation.timer.cancel()
        outcome.instance_id = instance.id
        if not invocation.future.done():
            invocation.future.set_result(outcome)

    def disconnect(self, instance: Instance, *, lost_error: bytes | None = None) -> None:
        """The instance's stream ended. An invocation it was running fails: it may have half-run."""
        pool = instance.pool
        if pool._instances.get(instance.id) is instance:
            del pool._instances[instance.id]
            if instance.stopping:
                pool._ended.append(instance.id)
                self._on_demand(pool.version.key)  # the scaler frees what it held without waiting for its tick
        if instance in pool._idle:
            pool._idle.remove(instance)
        instance.retired = True
        invocation = instance.busy
        if invocation is not None:
            payload = lost_error or (
                b'{"errorType":"Runtime.ExitError","errorMessage":"RequestId: '
                + invocation.request_id.encode()
                + b' Error: Runtime exited with error: instance lost"}'
            )
            self.finish(instance, Outcome(payload, "Runtime.ExitError"))
        if pool._pending:
            self._on_demand(pool.version.key)

    async def retire(self, instance: Instance, reason: str, *, busy_ok: bool = False) -> bool:
        """Stop an idle instance (scale down). False if it picked up work meanwhile."""
        pool = instance.pool
        if instance.retired:
            return False  # already asked to stop (its stream has not ended yet): not again
        if instance in pool._idle:
            pool._idle.remove(instance)
        elif not busy_ok and not (instance.busy is None and instance.stalled_since is not None):
            return False
        instance.retired = True
        instance.stopping = True
        try:
            await instance.send(pb.GatewayMessage(stop=pb.Stop(reason=reason)))
        except Exception as exc:  # the stream is already gone; disconnect() will clean up
            log.debug("stop of %s not delivered: %s", instance.id, exc)
        return True

    async def _assign(self, instance: Instance, invocation: Invocation) -> bool:
        pool = instance.pool
        instance.busy = invocation
        pool._busy += 1
        if invocation.timer is not None:
            invocation.timer.cancel()
        deadline = pool.version.spec.timeout_seconds + GRACE_SECONDS
        invocation.timer = self._clock.call_later(deadline, self._overdue, instance, invocation)
        try:
            await instance.send(invocation.message(pool.version.spec.timeout_seconds))
        except Exception as exc:
            # The caller decides where the invocation goes next (never two places: it was assigned to nobody).
            log.info("instance %s unreachable (%s); %s goes elsewhere", instance.id, exc, invocation.request_id)
            instance.busy = None
            pool._busy -= 1
            invocation.timer.cancel()
            invocation.timer = None
            self.disconnect(instance)
            return False
        return True
