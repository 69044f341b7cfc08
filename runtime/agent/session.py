"""The agent's end of the gRPC runtime interface: one authenticated stream per sandbox, reconnecting on loss.

`next()` asks the gateway for work at most once at a time (an outstanding Next survives a reconnect, because the
runtime is still waiting for it). Invocations arrive on the stream and are handed to the runtime waiting in /next.
One asked for ahead of the runtime (`and_next`, which saves a round trip) waits at most `DECLINE_AFTER` for the
runtime to come back to /next; otherwise it is declined, so the gateway gives it to an instance that is free —
Lambda hands work only to a runtime that asked. Results sent while the gateway is unreachable are dropped: their
caller's connection died with it. Writes on the stream are serialised: gRPC allows one outstanding write per call.

With several gateway replicas the agent dials the gateway's Service (its home address) and is sent on to the replica
that owns its function (FAILED_PRECONDITION with the owner's address in `kambda-owner`); when that stream is lost
it starts from home again, which sends it to whoever owns the function then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import grpc
from grpc import aio

from kambda import naming, streams
from kambda.naming import OWNER_METADATA

from ..rpc import runtime_pb2 as pb
from ..rpc import runtime_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
FATAL_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND)
RECONNECT_DELAYS = (0.1, 0.2, 0.5, 1.0)  # then 1 s forever: back within a second of a new owner
# awslambdaric is back in /next within a millisecond of /response (tens of ms on a loaded machine); a runtime this
# late is busy with something else, and the invocation is better served by another instance.
DECLINE_AFTER = 0.5


@dataclass(frozen=True)
class Identity:
    function: str  # namespace/name
    version: str
    instance_id: str
    credential: str

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (
            ("authorization", f"Bearer {self.credential}"),
            ("kambda-function", self.function),
            ("kambda-version", self.version),
            ("kambda-instance", self.instance_id),
        )


class SessionClosed(Exception):
    """The sandbox is shutting down: no further invocations will come."""


class SessionRejected(Exception):
    """The gateway refused this sandbox for good (bad credential, unknown function): retrying cannot help."""


Dial = Callable[[str], aio.Channel]


class Session:
    def __init__(
        self,
        channel: aio.Channel,
        identity: Identity,
        *,
        on_stop: Callable[[str], None],
        dial: Dial | None = None,
        on_spawn: Callable[[list[str]], None] | None = None,
    ) -> None:
        self._on_spawn = on_spawn  # the pod's: the gateway asks for more sandboxes beside this one
        self._home = pb_grpc.RuntimeInterfaceStub(channel)  # type: ignore[no-untyped-call]
        self._dial = dial or aio.insecure_channel
        self._redirected: tuple[str, aio.Channel, pb_grpc.RuntimeInterfaceStub] | None = None
        self._identity = identity
        self._on_stop = on_stop
        self._call: aio.StreamStreamCall | None = None
        self._write_lock = asyncio.Lock()
        self._connected = asyncio.Event()
        self._inbox: deque[pb.Invocation] = deque()  # arrived while no runtime was waiting in /next
        self._waiter: asyncio.Future[pb.Invocation] | None = None  # the runtime's /next
        self._next_outstanding = False
        self._closed = False
        self.failure: BaseException | None = None
        # Lambda's AWS_LAMBDA_INITIALIZATION_TYPE of this sandbox, as the gateway said when its stream first opened
        # (provisioned concurrency or on-demand), and said back to it on every reconnect.
        self._initialization_type: str | None = None
        self._told = asyncio.Event()

    @property
    def connected(self) -> bool:
        """Whether a stream to the gateway is open now."""
        return self._connected.is_set()

    async def initialization_type(self, *, timeout: float) -> str:
        """The sandbox's initialization type: what the gateway says once the stream is open, or on-demand if it
        has not said within `timeout` (the runtime is not kept from starting by an unreachable gateway)."""
        if self._initialization_type is None:
            try:
                await asyncio.wait_for(self._told.wait(), timeout)
            except TimeoutError:
                self._initialization_type = naming.ON_DEMAND
        return self._initialization_type or naming.ON_DEMAND

    async def _learn_type(self, call: aio.StreamStreamCall) -> None:
        with contextlib.suppress(aio.AioRpcError, asyncio.InvalidStateError):
            for key, value in await call.initial_metadata() or ():
                if key == naming.INITIALIZATION_TYPE_METADATA and isinstance(value, str):
                    if self._initialization_type is None:
                        self._initialization_type = value
                    self._told.set()

    @property
    def credential(self) -> str:
        """The function's credential, which the code store also asks for."""
        return self._identity.credential

    async def run(self) -> None:
        """Keep a stream open until closed or rejected; dispatch what the gateway sends."""
        attempt = 0
        while not self._closed:
            stub = self._home if self._redirected is None else self._redirected[2]
            metadata = self._identity.metadata()
            if self._initialization_type is not None:
                metadata += ((naming.INITIALIZATION_TYPE_METADATA, self._initialization_type),)
            call = stub.Session(metadata=metadata)
            self._call = call
            learning = asyncio.create_task(self._learn_type(call))
            try:
                if self._next_outstanding:
                    await self._write(call, pb.AgentMessage(next=pb.Next()))
                self._connected.set()
                async for message in call:
                    attempt = 0
                    self._dispatch(message)
                    if message.HasField("stop"):
                        async with self._write_lock:
                            await call.done_writing()  # half-close: the gateway sees the stream end cleanly
                        return
            except (aio.AioRpcError, asyncio.InvalidStateError):
                # A call that failed at once (the gateway is down: the channel fails fast) raises InvalidStateError
                # on the first write, not AioRpcError: either way its status says what happened. Uncaught, it once
                # ended this loop for good and left an agent alive but never reconnecting.
                code, details = await call.code(), await call.details()
                owner = owner_of(await call.trailing_metadata()) if code == grpc.StatusCode.FAILED_PRECONDITION else ""
                # Sent on: dial the owner (at once the first time; replicas that disagree for a moment back off).
                # Lost or refused: start over from the gateway's Service, which knows the owner of the moment.
                await self._redirect(owner or None)
                if owner:
                    log.info("the gateway sends this sandbox to %s (%s)", owner, details)
                    if attempt == 0:
                        attempt = 1
                        continue
                elif code in FATAL_CODES:
                    self.failure = SessionRejected(f"{code.name}: {details}")
                    self._on_stop(f"rejected by the gateway: {details}")
                    return
                else:
                    log.info("gateway stream lost (%s); reconnecting", code.name)
            except asyncio.CancelledError:
                call.cancel()
                raise
            finally:
                learning.cancel()
                self._connected.clear()
                self._call = None
                # What arrived on the lost stream was failed by the gateway when the stream ended (and may be run
                # elsewhere): it must not run here too.
                self._inbox.clear()
            if self._closed:
                return
            await asyncio.sleep(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
            attempt += 1

    async def _redirect(self, target: str | None) -> None:
        current = self._redirected
        if current is not None and current[0] == target:
            return
        if current is not None:
            await current[1].close()
        self._redirected = None
        if target is not None:
            channel = self._dial(target)
            self._redirected = (target, channel, pb_grpc.RuntimeInterfaceStub(channel))  # type: ignore[no-untyped-call]

    def _dispatch(self, message: pb.GatewayMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind == "invocation":
            self._next_outstanding = False
            invocation = message.invocation
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(invocation)
                return
            self._keep(invocation)
        elif kind == "spawn":
            if self._on_spawn is None:
                log.warning("%s: spawn asked of an agent that hosts no more sandboxes", self._identity.instance_id)
            else:
                self._on_spawn(list(message.spawn.instance_ids))
        elif kind == "stop":
            self._closed = True
            self._wake_closed()
            self._on_stop(message.stop.reason or "stopped by the gateway")

    def _keep(self, invocation: pb.Invocation) -> None:
        """Hold an invocation no runtime is waiting for; decline it unless one asks within DECLINE_AFTER."""
        self._inbox.appendleft(invocation)
        asyncio.get_running_loop().call_later(DECLINE_AFTER, self._decline_if_unclaimed, invocation)

    def _decline_if_unclaimed(self, invocation: pb.Invocation) -> None:
        if invocation not in self._inbox or self._closed:
            return
        self._inbox.remove(invocation)
        log.info(
            "runtime of %s did not ask for %s in time: declined", self._identity.instance_id, invocation.request_id
        )
        message = pb.AgentMessage(decline=pb.Decline(request_id=invocation.request_id))
        asyncio.get_running_loop().create_task(self._send(message))

    def _wake_closed(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(SessionClosed())

    def has_work(self) -> bool:
        """Whether an invocation is already here for the runtime's next /next (it need not wait for one)."""
        return bool(self._inbox)

    async def next(self) -> pb.Invocation:
        """The next invocation for this sandbox; asks the gateway only if no request is already outstanding."""
        if self._closed:
            raise SessionClosed()
        if self._inbox:
            return self._inbox.popleft()
        waiter: asyncio.Future[pb.Invocation] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            if not self._next_outstanding:
                self._next_outstanding = True
                await self._send(pb.AgentMessage(next=pb.Next()))
            return await waiter
        except asyncio.CancelledError:
            # The runtime went away (its /next was cancelled) just after an invocation was handed to it: keep the
            # invocation for its successor, or give it back, exactly as if it had arrived a moment later.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._keep(waiter.result())
            raise
        finally:
            self._waiter = None

    async def send_result(self, message: pb.AgentMessage, *, and_next: bool = False) -> None:
        """Send a Response, Error or InitError; with `and_next`, ask for the next invocation in the same message."""
        if and_next and not self._next_outstanding and not self._inbox:
            kind = message.WhichOneof("kind")
            if kind == "response":
                message.response.and_next = True
            elif kind == "error":
                message.error.and_next = True
            self._next_outstanding = kind in ("response", "error")
        await self._send(message)

    async def _send(self, message: pb.AgentMessage) -> None:
        call = self._call
        if call is None:
            # Not connected: a Next is re-sent on reconnect; a result has nobody left to read it.
            return
        try:
            await self._write(call, message)
        except (aio.AioRpcError, asyncio.InvalidStateError) as exc:
            log.info("could not send to the gateway: %s", exc)

    async def _write(self, call: aio.StreamStreamCall, message: pb.AgentMessage) -> None:
        await streams.write_whole(self._write_lock, lambda: call.write(message))

    async def close(self) -> None:
        self._closed = True
        self._wake_closed()
        call = self._call
        if call is not None:
            try:
                async with self._write_lock:
                    await call.done_writing()
            except (aio.AioRpcError, asyncio.InvalidStateError):
                call.cancel()
        await self._redirect(None)


def owner_of(metadata: Mapping[str, object] | object) -> str:
    """The owner's address a redirect names, or ""."""
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == OWNER_METADATA and isinstance(value, str):
            return value
    return ""
