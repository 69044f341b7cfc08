"""The gateway's end of the gRPC runtime interface: authenticates each agent stream and feeds the dispatcher.

With several replicas an agent's stream is kept only by the owner of its function (`leases.Ownership`); another
replica sends it on (FAILED_PRECONDITION naming the owner's address in `kambda-owner`, which the agent dials), and
an owner that loses a function sends its instances on too: idle ones at once, busy ones when they next ask for work.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NoReturn, TypeAlias

import grpc
from grpc import aio

from kambda import credentials, naming, streams
from kambda.naming import INITIALIZATION_TYPE_METADATA, OWNER_METADATA
from kambda.runtime.rpc import runtime_pb2 as pb
from kambda.runtime.rpc import runtime_pb2_grpc as pb_grpc

from .dispatching import Dispatcher, Instance, Outcome
from .leases import Ownership
from .pools import WarmPools
from .registry import Registry

log = logging.getLogger(__name__)
MAX_MESSAGE = 16 * 1024 * 1024
SERVER_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 2_000),  # below the agents' 3 s keepalive (agent/main.py)
    ("grpc.http2.max_pings_without_data", 0),
    # gRPC sets SO_REUSEPORT by default, which let a second process (a function, or a second gateway) bind the same
    # port and receive reconnecting agents and their credentials. One listener per port.
    ("grpc.so_reuseport", 0),
    # A connection that never completes its HTTP/2 handshake (a stalled or hostile client) is closed after 10 s
    # instead of gRPC's default 120 s, so stalled connections cannot pile up on the runtime interface port.
    ("grpc.server_handshake_timeout_ms", 10_000),
)


Context: TypeAlias = aio.ServicerContext[pb.AgentMessage, pb.GatewayMessage]
PoolContext: TypeAlias = aio.ServicerContext[pb.PoolHello, pb.Specialise]


class RuntimeInterface(pb_grpc.RuntimeInterfaceServicer):
    def __init__(
        self,
        registry: Registry,
        dispatcher: Dispatcher,
        signing_key: bytes,
        ownership: Ownership | None = None,
        pools: WarmPools | None = None,  # None: this gateway has no warm pools (the local backend)
    ) -> None:
        self._pools = pools
        self._registry = registry
        self._dispatcher = dispatcher
        self._key = signing_key
        self._ownership = ownership or Ownership.alone()
        self._sessions: dict[Instance, asyncio.Task[object]] = {}
        self._moving: set[Instance] = set()

    def hand_over(self) -> None:
        """Functions were lost to other replicas: send their idle instances on (busy ones go at their next Next)."""
        for instance in self._dispatcher.hand_over(self._ownership.is_mine):
            task = self._sessions.get(instance)
            if task is not None:
                self._moving.add(instance)
                task.cancel()

    async def Wait(self, request: pb.PoolHello, context: PoolContext) -> None:
        """A warm-pool pod waits here until the Kubernetes backend takes it for a version (one `Specialise`)."""
        md = _metadata(context)
        key = naming.pool_key(request.namespace, request.runtime)
        if md.get("kambda-function") != key or not self._verified(key, md):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid credential for this pool")
        if self._pools is None or not request.pod:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this gateway keeps no warm pools")
        assert self._pools is not None
        if request.function:  # specialised before: its own order again, or nothing (never a pool's wait again)
            version = self._registry.by_key(request.function, request.version)
            order = None
            if version is not None and version.spec.namespace == request.namespace:
                order = await self._pools.reissue(version, request.pod)
            if order is None:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"pod {request.pod} is not a specialised pod of {request.function}:{request.version}",
                )
            await context.write(order)
            return
        if not self._ownership.holds(self._ownership.bucket(key)):
            await self._send_on(context, key)  # a pool's pods wait on the replica that owns the pool's key
        waiter = self._pools.join(request.namespace, request.runtime, request.pod)
        try:
            await context.write(await waiter.order())
        finally:
            self._pools.leave(waiter)

    def _verified(self, key: str, md: dict[str, str]) -> bool:
        """Whether the stream's bearer credential is the one the signing key gives `key` (a function or a pool)."""
        return credentials.verify(self._key, key, md.get("authorization", "").removeprefix("Bearer "))

    async def _send_on(self, context: Context | PoolContext, function: str) -> NoReturn:
        peer = self._ownership.owner(function)
        if peer is None or peer == self._ownership.me:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{function} has no owner at the moment; try again")
        assert peer is not None
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{function} is served by {peer.identity}",
            trailing_metadata=((OWNER_METADATA, peer.grpc),),
        )
        raise AssertionError("abort returns only by raising")

    async def Session(self, request_iterator: AsyncIterator[pb.AgentMessage], context: Context) -> None:
        md = _metadata(context)
        function = md.get("kambda-function", "")
        if not function or not self._verified(function, md):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid credential for this function")
        # Sent on before the version is looked up: NOT_FOUND is final for an agent, and a replica that does not
        # own the function may not have seen its newest version yet.
        bucket = self._ownership.bucket(function)
        if not self._ownership.holds(bucket):
            await self._send_on(context, function)
        version = self._registry.by_key(function, md.get("kambda-version", ""))
        instance_id = md.get("kambda-instance", "")
        if version is None or not instance_id:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no such function version: {function}")
        assert version is not None
        claimed = md.get(INITIALIZATION_TYPE_METADATA)
        instance = self._dispatcher.connect(version, instance_id, _serialised_writer(context), claimed)
        task = asyncio.current_task()
        assert task is not None
        self._sessions[instance] = task
        try:
            # Its initialization type, which its runtime starts with (AWS_LAMBDA_INITIALIZATION_TYPE).
            await context.send_initial_metadata(((INITIALIZATION_TYPE_METADATA, instance.kind),))
            async for message in request_iterator:
                kind = message.WhichOneof("kind")
                wants_next = kind == "next"
                if kind == "response":
                    r = message.response
                    self._dispatcher.finish(instance, Outcome(r.payload, None, r.report, r.log_tail))
                    wants_next = r.and_next
                elif kind == "error":
                    e = message.error
                    self._dispatcher.finish(instance, Outcome(e.payload, e.error_type, e.report, e.log_tail))
                    wants_next = e.and_next
                elif kind == "decline":
                    await self._dispatcher.decline(instance, message.decline.request_id)
                elif kind == "init_error":
                    log.warning("%s init failed: %s", function, message.init_error.error_type)
                if wants_next:
                    if not self._ownership.holds(bucket):
                        await self._send_on(context, function)  # it stays Next-outstanding: the owner serves it
                    await self._dispatcher.ready(instance)
        except asyncio.CancelledError:
            if instance not in self._moving:
                raise
            await self._send_on(context, function)
        finally:
            self._sessions.pop(instance, None)
            self._moving.discard(instance)
            self._dispatcher.disconnect(instance)


def _metadata(context: Context | PoolContext) -> dict[str, str]:
    return {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}


def _serialised_writer(
    context: aio.ServicerContext[pb.AgentMessage, pb.GatewayMessage],
) -> Callable[[pb.GatewayMessage], Awaitable[None]]:
    """Writes to one stream, one at a time and each to its end (`kambda.streams`). A failed write ends the stream:
    its instance is gone for the dispatcher, so it must not live on unseen; the agent reconnects and is counted
    afresh."""
    lock = asyncio.Lock()
    session = asyncio.current_task()

    def end_session(exc: BaseException) -> None:
        if session is not None:
            session.cancel()  # at its next await, even if the failed write was its own

    async def write(message: pb.GatewayMessage) -> None:
        await streams.write_whole(lock, lambda: context.write(message), on_failure=end_session)

    return write


async def start_server(servicer: RuntimeInterface, host: str, port: int) -> tuple[aio.Server, int]:
    server = aio.server(options=SERVER_OPTIONS)
    pb_grpc.add_RuntimeInterfaceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(errno.EADDRINUSE, f"the runtime interface port {host}:{port} is in use (or not bindable)")
    await server.start()
    return server, bound
