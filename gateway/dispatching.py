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
    timer: asyncio.TimerHandle | None = None  # queued: the wait for an instance; running: the deadline + grace

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
    id: str
    pool: Pool
    send: Sender
    connected_at: float = field(default_factory=time.monotonic)
    idle_since: float = field(default_factory=time.monotonic)
    busy: Invocation | None = None
    retired: bool = False
    stalled_since: float | None = None  # declined work its runtime had not asked for: no capacity until Next


class Pool:
    """One function version's queue and instances."""

    def __init__(self, version: FunctionVersion) -> None:
        self.version = version
        self.pending: deque[Invocation] = deque()
        self.idle: list[Instance] = []  # a stack: the most recently used instance is reused first, so the
        # others age out and the pool shrinks back to what the load needs
        self.instances: dict[str, Instance] = {}
        self.starting: dict[str, float] = {}  # asked of the backend, not yet connected: id -> monotonic time asked
        self.busy = 0

    @property
    def active(self) -> int:
        """Invocations accepted and not yet answered: the version's concurrency."""
        return self.busy + len(self.pending)

    def stalled(self) -> list[Instance]:
        """Connected instances whose runtime is neither working nor asking for work."""
        return [i for i in self.instances.values() if i.stalled_since is not None]


class NoInstance(Exception):
    """No instance took the invocation within the queue timeout (the backend cannot start one)."""


class Moved(Exception):
    """The function's owner changed while the invocation waited here: nothing ran, it goes to the new owner."""


GRACE_SECONDS = 10.0  # beyond the function timeout, before a silent instance's invocation is failed


class Dispatcher:
    def __init__(
        self,
        *,
        on_demand: Callable[[Pool], None],
        queue_timeout: float = 120.0,
    ) -> None:
        self.pools: dict[tuple[str, str], Pool] = {}
        self._on_demand = on_demand  # the scaler's wake-up: work is waiting and no instance is idle
        self._queue_timeout = queue_timeout

    def pool(self, version: FunctionVersion) -> Pool:
        pool = self.pools.get(version.key)
        if pool is None:
            pool = self.pools[version.key] = Pool(version)
        else:
            pool.version = version  # a reloaded version keeps its queue and instances
        return pool

    # ---- the caller's side -----------------------------------------------------------------------------------

    async def submit(self, version: FunctionVersion, invocation: Invocation) -> None:
        """Hand the invocation to an idle instance, or queue it; its future resolves with the Outcome."""
        pool = self.pool(version)
        if await self._assign_to_idle(pool, invocation):
            return
        self._queue(pool, invocation)

    async def _assign_to_idle(self, pool: Pool, invocation: Invocation) -> bool:
        while pool.idle:
            if await self._assign(pool.idle.pop(), invocation):
                return True
        return False

    def _queue(self, pool: Pool, invocation: Invocation, *, first: bool = False) -> None:
        if first:
            pool.pending.appendleft(invocation)
        else:
            pool.pending.append(invocation)
        invocation.timer = asyncio.get_running_loop().call_later(self._queue_timeout, self._expire, pool, invocation)
        self._on_demand(pool)

    def _expire(self, pool: Pool, invocation: Invocation) -> None:
        try:
            pool.pending.remove(invocation)
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
        for pool in self.pools.values():
            if owned(pool.version.function):
                continue
            while pool.pending:
                invocation = pool.pending.popleft()
                if invocation.timer is not None:
                    invocation.timer.cancel()
                if not invocation.future.done():
                    invocation.future.set_exception(Moved())
            for instance in pool.idle:
                instance.retired = True
                moving.append(instance)
            pool.idle.clear()
        return moving

    # ---- the instance's side ---------------------------------------------------------------------------------

    def connect(self, version: FunctionVersion, instance_id: str, send: Sender) -> Instance:
        pool = self.pool(version)
        if pool.starting.pop(instance_id, None) is None and pool.starting:
            # Backends that cannot name instances in advance (Kubernetes: pods) hand out placeholders; a new
            # instance takes the place of the oldest one.
            del pool.starting[min(pool.starting, key=pool.starting.__getitem__)]
        old = pool.instances.get(instance_id)
        if old is not None:  # the same instance reconnecting: its old stream is dead
            self.disconnect(old)
        instance = Instance(instance_id, pool, send)
        pool.instances[instance_id] = instance
        return instance

    async def ready(self, instance: Instance) -> None:
        """The instance's runtime asked for its next invocation."""
        pool = instance.pool
        if instance.retired or instance.busy is not None:
            return
        instance.stalled_since = None
        while pool.pending:
            invocation = pool.pending.popleft()
            if invocation.future.done():  # its caller went away while it waited
                continue
            if invocation.timer is not None:
                invocation.timer.cancel()
            if not await self._assign(instance, invocation):
                self._queue(pool, invocation, first=True)  # the stream is broken; another instance takes it
            return
        instance.idle_since = time.monotonic()
        pool.idle.append(instance)

    async def decline(self, instance: Instance, request_id: str) -> None:
        """The instance gave back work its runtime had not asked for: it goes first to another instance."""
        invocation = instance.busy
        if invocation is None or invocation.request_id != request_id:
            return
        pool = instance.pool
        instance.busy = None
        pool.busy -= 1
        instance.stalled_since = time.monotonic()
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
        instance.pool.busy -= 1
        instance.idle_since = time.monotonic()
        if invocation.timer is not None:
            invocation.timer.cancel()
        outcome.instance_id = instance.id
        if not invocation.future.done():
            invocation.future.set_result(outcome)

    def disconnect(self, instance: Instance, *, lost_error: bytes | None = None) -> None:
        """The instance's stream ended. An invocation it was running fails: it may have half-run."""
        pool = instance.pool
        if pool.instances.get(instance.id) is instance:
            del pool.instances[instance.id]
        if instance in pool.idle:
            pool.idle.remove(instance)
        instance.retired = True
        invocation = instance.busy
        if invocation is not None:
            payload = lost_error or (
                b'{"errorType":"Runtime.ExitError","errorMessage":"RequestId: '
                + invocation.request_id.encode()
                + b' Error: Runtime exited with error: instance lost"}'
            )
            self.finish(instance, Outcome(payload, "Runtime.ExitError"))
        if pool.pending:
            self._on_demand(pool)

    async def retire(self, instance: Instance, reason: str, *, busy_ok: bool = False) -> bool:
        """Stop an idle instance (scale down). False if it picked up work meanwhile."""
        pool = instance.pool
        if instance.retired:
            return False  # already asked to stop (its stream has not ended yet): not again
        if instance in pool.idle:
            pool.idle.remove(instance)
        elif not busy_ok and not (instance.busy is None and instance.stalled_since is not None):
            return False
        instance.retired = True
        try:
            await instance.send(pb.GatewayMessage(stop=pb.Stop(reason=reason)))
        except Exception as exc:  # the stream is already gone; disconnect() will clean up
            log.debug("stop of %s not delivered: %s", instance.id, exc)
        return True

    async def _assign(self, instance: Instance, invocation: Invocation) -> bool:
        pool = instance.pool
        instance.busy = invocation
        pool.busy += 1
        if invocation.timer is not None:
            invocation.timer.cancel()
        deadline = pool.version.spec.timeout_seconds + GRACE_SECONDS
        invocation.timer = asyncio.get_running_loop().call_later(deadline, self._overdue, instance, invocation)
        try:
            await instance.send(invocation.message(pool.version.spec.timeout_seconds))
        except Exception as exc:
            # The caller decides where the invocation goes next (never two places: it was assigned to nobody).
            log.info("instance %s unreachable (%s); %s goes elsewhere", instance.id, exc, invocation.request_id)
            instance.busy = None
            pool.busy -= 1
            invocation.timer.cancel()
            invocation.timer = None
            self.disconnect(instance)
            return False
        return True
