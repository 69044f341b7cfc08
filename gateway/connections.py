"""Connections: a guard in front of aiohttp's HTTP/1.1 protocol, and bounded request bodies.

Left alone, aiohttp keeps a connection open as long as its client wants: a request head that never completes, a
body that never arrives and a silent connection all hold a file descriptor (21,000 of them exhausted a gateway's).
The guard bounds each phase of a connection:

- `header_timeout`: a request head not complete this long after its first byte is answered 408 and closed; a new
  connection that sends nothing for this long is closed;
- `body_timeout`: a body not received this long after its handler starts reading it is answered 408 and closed
  (`read_body`); the same bound applies to a response the client stops reading;
- `idle_timeout`: a keep-alive connection idle this long is closed;
- `max_connections`: beyond it the longest-idle keep-alive connection makes room, else the newcomer is answered
  503 with `Retry-After: 1`.

The decisions are pure (`ConnectionState`, `pick_victim`, `drains_on_shutdown`, `connection_limit`,
`decode_content`) with time passed in, so they are unit-tested with explicit times; `Guard` and `_Connection` do
the I/O: `_Connection` is the protocol asyncio talks to and forwards everything to aiohttp's `RequestHandler`;
the guard learns that a head is complete from the server's request factory (called as aiohttp starts handling a
request) and that a request is done from the access-log hook (called once its response is written).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import resource
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger, AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader

from kambda import jsontext

from . import errors

log = logging.getLogger("kambda.gateway.connections")

K = TypeVar("K")


@dataclass(frozen=True)
class Limits:
    header_timeout: float = 15.0
    body_timeout: float = 60.0
    idle_timeout: float = 75.0
    max_connections: int = 10_000
    # After answering on its own (408, 503) the guard reads and discards what the client still sends for this
    # long before closing: closing with unread input makes the kernel send a reset, which can destroy the answer.
    linger: float = 1.0
    # After answering a request whose body its handler did not read, aiohttp reads and discards the rest of it for
    # at most this long (its lingering time): those bytes are not a new request head.
    drain: float = 10.0

    @property
    def tick(self) -> float:
        """How often to sweep: often enough that no deadline is overshot by more than a quarter of itself."""
        return min(1.0, self.header_timeout / 4, self.body_timeout / 4, self.idle_timeout / 4)


# ---- pure decisions ------------------------------------------------------------------------------------------


class Phase(enum.Enum):
    NEW = "new"  # connected, nothing received yet
    HEAD = "head"  # part of a request head received
    REQUEST = "request"  # a complete head: aiohttp is handling it (reading the body, invoking, answering)
    IDLE = "idle"  # keep-alive, between requests
    DRAINING = "draining"  # answered; aiohttp discards the rest of an unread body (at most `drain` seconds), then idle
    CLOSING = "closing"  # the guard answered on its own and discards input until the client closes


class Verdict(enum.Enum):
    SILENT = "silent"  # nothing received within header_timeout: close
    HEADER_TIMEOUT = "header-timeout"  # head incomplete after header_timeout: 408, close
    IDLE = "idle"  # keep-alive idle past idle_timeout: close
    WRITE_STALLED = "write-stalled"  # the client has not read our response for body_timeout: abort
    LINGERED = "lingered"  # done discarding after our own answer: close


@dataclass
class ConnectionState:
    """One connection's phase and since when, advanced by events; `verdict` says whether its time is up."""

    phase: Phase
    since: float
    requests: int = 0
    write_paused_since: float | None = None
    drained_by: float = 0.0  # DRAINING: when aiohttp has stopped discarding the unread body

    @classmethod
    def connected(cls, now: float) -> ConnectionState:
        return cls(Phase.NEW, now)

    def data(self, now: float) -> None:
        # Bytes on a new or idle connection start a request head; while a request is handled, or its unread body
        # drained, they are that body (or a pipelined request, which aiohttp queues).
        if self.phase in (Phase.NEW, Phase.IDLE) or (self.phase is Phase.DRAINING and now >= self.drained_by):
            self.phase, self.since = Phase.HEAD, now

    def head_received(self, now: float) -> None:
        if self.phase is not Phase.CLOSING:
            self.phase, self.since = Phase.REQUEST, now

    def request_done(self, now: float, *, body_complete: bool = True, drain: float = 0.0) -> None:
        """The response is written; if the body was not all read, aiohttp drains it for up to `drain` seconds."""
        if self.phase is not Phase.CLOSING:
            self.phase, self.since = (Phase.IDLE, now) if body_complete else (Phase.DRAINING, now)
            self.drained_by = now + drain
            self.requests += 1

    def closing(self, now: float) -> None:
        self.phase, self.since = Phase.CLOSING, now

    def write_paused(self, now: float) -> None:
        if self.write_paused_since is None:
            self.write_paused_since = now

    def write_resumed(self, now: float) -> None:
        self.write_paused_since = None

    def verdict(self, now: float, limits: Limits) -> Verdict | None:
        age = now - self.since
        if self.write_paused_since is not None and now - self.write_paused_since >= limits.body_timeout:
            return Verdict.WRITE_STALLED
        if self.phase is Phase.NEW and age >= limits.header_timeout:
            return Verdict.SILENT
        if self.phase is Phase.HEAD and age >= limits.header_timeout:
            return Verdict.HEADER_TIMEOUT
        if self.phase is Phase.IDLE and age >= limits.idle_timeout:
            return Verdict.IDLE
        if self.phase is Phase.DRAINING and now - self.drained_by >= limits.idle_timeout:
            return Verdict.IDLE  # idle since aiohttp stopped draining (if it did not close the connection itself)
        if self.phase is Phase.CLOSING and age >= limits.linger:
            return Verdict.LINGERED
        # REQUEST has no deadline here: an invocation may run for up to 900 s, and its body is bounded where it
        # is read.
        return None


def pick_victim(connections: Iterable[tuple[K, ConnectionState]]) -> K | None:
    """Which connection makes room for a new one: one the guard is already closing, else the longest-idle
    keep-alive connection; None if every connection is busy (the newcomer is refused)."""
    best: tuple[int, float, K] | None = None
    for key, state in connections:
        if state.phase is Phase.CLOSING:
            rank = 0
        elif state.phase is Phase.IDLE:
            rank = 1
        else:
            continue
        if best is None or (rank, state.since) < best[:2]:
            best = (rank, state.since, key)
    return best[2] if best is not None else None


def drains_on_shutdown(state: ConnectionState, body_complete: bool) -> bool:
    """On SIGTERM, whether to let this connection's request finish (an invocation in flight) rather than close it
    at once (idle, silent, half a head, or a body that is still not here)."""
    return state.phase is Phase.REQUEST and body_complete


def connection_limit(requested: int, open_files: int) -> int:
    """At most `requested` connections, leaving a tenth of the open-file limit (at least 256) for everything else
    the gateway opens: agents' pipes and sockets, the gRPC server, the queue's database, log files."""
    headroom = max(256, open_files // 10)
    return max(1, min(requested, open_files - headroom))


# ---- bodies --------------------------------------------------------------------------------------------------

_GZIP = 16 + zlib.MAX_WBITS
_ZLIB = zlib.MAX_WBITS
_RAW_DEFLATE = -zlib.MAX_WBITS


def content_coding(header: str | None) -> str:
    """The one content coding of a body ('identity', 'gzip' or 'deflate'), or 415 for anything else."""
    codings = [c.strip().lower() for c in (header or "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return "identity"
    if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
        return "deflate" if codings[0] == "deflate" else "gzip"
    raise errors.unsupported_media_type(
        f"Content-Encoding {header!r} is not supported (gzip, deflate or identity, one at most)"
    )


def decode_content(raw: bytes, coding: str, limit: int, too_large: str) -> bytes:
    """The body with its content coding undone, never more than `limit` bytes of it held (413 beyond)."""
    if coding == "identity" or not raw:
        return raw
    # RFC 9110's deflate is zlib-wrapped, but some clients send raw deflate; the first byte tells them apart (zlib's
    # compression method nibble is 8), as aiohttp's own decoder does.
    deflate_wbits = _ZLIB if raw[0] & 0x0F == 8 else _RAW_DEFLATE
    wbits = _GZIP if coding == "gzip" else deflate_wbits
    out = bytearray()
    pending = raw
    try:
        while pending:
            decompressor = zlib.decompressobj(wbits)
            # max_length bounds what one call may produce, so a small bomb cannot expand past the limit.
            out += decompressor.decompress(pending, limit + 1 - len(out))
            if len(out) > limit:
                raise errors.too_large(too_large)
            if not decompressor.eof:
                raise errors.invalid_content(f"The {coding} request body is truncated")
            pending = decompressor.unused_data
            if pending and coding != "gzip":  # only gzip has members that may follow one another
                raise errors.invalid_content(f"Unexpected data after the {coding} request body")
    except zlib.error as exc:
        raise errors.invalid_content(f"Could not decode the {coding} request body: {exc}") from None
    return bytes(out)


async def read_body(request: web.Request, *, limit: int, timeout: float, too_large: str) -> bytes:
    """The request's body, decoded, within `timeout` seconds and `limit` bytes (before and after decoding).

    Every failure is an AWS-shaped error; those that leave the connection mid-body also close it.
    """
    coding = content_coding(request.headers.get("Content-Encoding"))
    raw = await read_raw_body(request, limit=limit, timeout=timeout, too_large=too_large)
    return decode_content(raw, coding, limit, too_large)


RAW_BODY = "kambda.raw-body"  # where a request keeps its body once read (the authenticator reads it first)


async def read_json_object(
    request: web.Request,
    *,
    limit: int,
    timeout: float,
    too_large: str,
    what: str = "The request body",
    empty: Mapping[str, Any] | None = None,
) -> Mapping[str, Any]:
    """A body that must be one strict JSON object (`empty`, if given, stands for an empty body)."""
    raw = await read_body(request, limit=limit, timeout=timeout, too_large=too_large)
    if empty is not None and not raw.strip():
        return empty
    try:
        value = jsontext.loads(raw)
    except jsontext.InvalidJSON as exc:
        raise errors.invalid_content(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, Mapping):
        raise errors.invalid_content(f"{what} must be a JSON object")
    return value


async def read_raw_body(request: web.Request, *, limit: int, timeout: float, too_large: str) -> bytes:
    """The request's body as sent, under `read_body`'s rules; read once, then kept on the request.

    Read chunk by chunk against `limit`, rather than with aiohttp's `read()` (bounded only by the application's
    `client_max_size`, the largest of all routes' limits): a chunked body with no Content-Length is refused at
    `limit`, not after the largest body any route takes has been buffered."""
    kept = request.get(RAW_BODY)
    if isinstance(kept, bytes):
        if len(kept) > limit:
            raise errors.too_large(too_large)
        return kept
    if request.content_length is not None and request.content_length > limit:
        raise errors.too_large(too_large)
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_any():
                body += chunk
                if len(body) > limit:
                    raise errors.too_large(too_large)
    except TimeoutError:
        raise errors.request_timeout(f"The request body was not received within {timeout:g} seconds") from None
    except (web.RequestPayloadError, asyncio.IncompleteReadError, ConnectionError) as exc:
        raise errors.invalid_content(f"Could not read the request body: {exc}", close=True) from None
    raw = request[RAW_BODY] = bytes(body)
    return raw


# ---- I/O -----------------------------------------------------------------------------------------------------


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (connections are file descriptors); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Linux refuses an unlimited soft limit above fs.nr_open (1 Mi by default).
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    return (1 << 20) if soft == resource.RLIM_INFINITY else soft


_RequestFactory = Callable[
    [RawRequestMessage, StreamReader, web.RequestHandler, AbstractStreamWriter, "asyncio.Task[None]"],
    web.BaseRequest,
]


class _Connection(asyncio.Protocol):
    """What asyncio talks to: records each event in the connection's state and forwards it to aiohttp."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.state = ConnectionState.connected(guard.clock())
        self.transport: asyncio.Transport | None = None
        self.handler: web.RequestHandler | None = None
        self.request: web.BaseRequest | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.guard.admit(self)

    def data_received(self, data: bytes) -> None:
        self.state.data(self.guard.clock())
        if self.handler is not None and self.state.phase is not Phase.CLOSING:
            self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        if self.handler is not None and self.state.phase is not Phase.CLOSING:
            self.handler.eof_received()
        return None  # the transport closes (aiohttp's handler never keeps a half-closed connection open either)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.forget(self)
        if self.handler is not None:
            self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.state.write_paused(self.guard.clock())
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.state.write_resumed(self.guard.clock())
        if self.handler is not None:
            self.handler.resume_writing()

    def answer_and_close(self, error: errors.AWSError) -> None:
        """Write our own answer, end our side, and discard input until the client closes (or `linger` ends)."""
        self.state.closing(self.guard.clock())
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(errors.raw_response(error))
            if self.transport.can_write_eof():
                self.transport.write_eof()

    def close(self, *, abort: bool = False) -> None:
        if self.transport is None or (self.transport.is_closing() and not abort):
            return
        if abort:
            # close() waits for the write buffer to drain, which a client that reads nothing never lets happen.
            self.transport.abort()
        elif self.handler is not None:
            self.handler.force_close()
        else:
            self.transport.close()


class Guard:
    """Tracks every connection of one HTTP server, sweeps them every `limits.tick`, admits or refuses new ones."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._live: set[_Connection] = set()
        self._by_handler: dict[web.RequestHandler, _Connection] = {}
        self._server: web.Server | None = None
        self._changed = asyncio.Event()
        self._stopping = False

    def __len__(self) -> int:
        return len(self._live)

    # -- wiring --

    def attach(self, server: web.Server) -> None:
        """Serve through this aiohttp server, learning from its request factory when a request head is complete."""
        self._server = server
        original: _RequestFactory = server.request_factory

        def request_factory(
            message: RawRequestMessage,
            payload: StreamReader,
            protocol: web.RequestHandler,
            writer: AbstractStreamWriter,
            task: asyncio.Task[None],
        ) -> web.BaseRequest:
            request = original(message, payload, protocol, writer, task)
            conn = self._by_handler.get(protocol)
            if conn is not None:
                conn.state.head_received(self.clock())
                conn.request = request
            return request

        server.request_factory = request_factory

    def access_log_class(self) -> type[AbstractAccessLogger]:
        """aiohttp calls its access logger once a response is written: the end of a request, for the guard."""
        guard = self

        class RequestDone(AbstractAccessLogger):
            def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
                guard.request_done(request, response)

        return RequestDone

    def protocol(self) -> asyncio.Protocol:
        """The protocol factory for `loop.create_server`."""
        return _Connection(self)

    # -- events --

    def admit(self, conn: _Connection) -> None:
        if self._stopping or self._server is None:
            conn.answer_and_close(errors.unavailable("The gateway is shutting down"))
            self._live.add(conn)
            return
        if len(self._live) >= self.limits.max_connections:
            victim = pick_victim((c, c.state) for c in self._live)
            if victim is None:
                log.debug("connection limit (%d) reached, refusing a connection", self.limits.max_connections)
                conn.answer_and_close(errors.unavailable("Too many connections; retry shortly"))
                self._live.add(conn)
                return
            self._drop(victim, abort=victim.state.phase is Phase.CLOSING)
        handler = self._server()
        conn.handler = handler
        self._by_handler[handler] = conn
        self._live.add(conn)
        assert conn.transport is not None
        handler.connection_made(conn.transport)

    def request_done(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        conn = self._by_handler.get(request.protocol)
        if conn is None:
            return
        body_complete = request.content.is_eof()
        conn.state.request_done(self.clock(), body_complete=body_complete, drain=self.limits.drain)
        conn.request = None
        if not response.keep_alive and not body_complete:
            # We gave up on this body (a 408, an unreadable body): aiohttp would otherwise spend its lingering time
            # waiting for the rest from a client that stalled. The answer is already in the transport's buffer.
            conn.close()
        self._changed.set()

    def forget(self, conn: _Connection) -> None:
        self._live.discard(conn)
        if conn.handler is not None:
            self._by_handler.pop(conn.handler, None)
        self._changed.set()

    def _drop(self, conn: _Connection, *, abort: bool = False) -> None:
        """Close a connection and stop counting it now (its connection_lost comes a loop iteration later)."""
        self._live.discard(conn)
        conn.close(abort=abort)

    # -- time --

    def sweep(self) -> Counter[Verdict]:
        """Act on every connection whose time is up; how many of each kind were closed."""
        now = self.clock()
        acted: Counter[Verdict] = Counter()
        for conn in list(self._live):
            verdict = conn.state.verdict(now, self.limits)
            if verdict is None:
                continue
            acted[verdict] += 1
            if verdict is Verdict.HEADER_TIMEOUT:
                conn.answer_and_close(
                    errors.request_timeout(
                        f"The request head was not received within {self.limits.header_timeout:g} seconds"
                    )
                )
            else:
                self._drop(conn, abort=verdict in (Verdict.WRITE_STALLED, Verdict.LINGERED))
        return acted

    async def run(self) -> None:
        """Sweep until cancelled."""
        while True:
            await asyncio.sleep(self.limits.tick)
            acted = self.sweep()
            if acted:
                log.info(
                    "closed stalled connections: %s",
                    ", ".join(f"{v.value} {n}" for v, n in sorted(acted.items(), key=lambda i: i[0].value)),
                )

    # -- shutdown --

    async def shutdown(self, grace: float) -> None:
        """Close every connection that is not serving a request now; give in-flight requests `grace` seconds to
        finish (their connections close after the answer), then close whatever is left."""
        self._stopping = True
        for conn in list(self._live):
            body_complete = conn.request is not None and conn.request.content.is_eof()
            if drains_on_shutdown(conn.state, body_complete) and conn.handler is not None:
                conn.handler.close()  # no keep-alive after this answer
            else:
                self._drop(conn, abort=conn.state.phase is Phase.CLOSING)
        deadline = self.clock() + grace
        while self._live and (remaining := deadline - self.clock()) > 0:
            self._changed.clear()
            try:
                async with asyncio.timeout(min(remaining, self.limits.tick)):
                    await self._changed.wait()
            except TimeoutError:
                pass
        if self._live:
            log.warning("%d requests still running after %g s of grace: closing them", len(self._live), grace)
        for conn in list(self._live):
            self._drop(conn, abort=True)
