"""The HTTP Lambda Runtime API (2018-06-01) that an unmodified runtime client talks to, on 127.0.0.1.

Exactly what awslambdaric and custom `bootstrap` runtimes expect: `Content-Type: application/json` with no charset
on /next (else awslambdaric hands the handler bytes), 202 `{"status":"OK"}` for posts, 400 InvalidRequestID for a
stale id, 403 InvalidStateTransition for a call out of order, 413 for an oversized response, and header limits big
enough for the 1 MiB X-Ray error-cause header awslambdaric sends with errors.

It is a small HTTP/1.1 server on asyncio's protocol layer rather than aiohttp: it sits on the invocation path twice
per invocation (/next and /response), and the agent starting in a pod should not spend a quarter of a second
importing a web framework. Parsing is llhttp (Node.js's parser, through httptools: 7 ms to import and 2 µs a
request here, against h11's 49 ms and 94 µs), which refuses what RFC 9112 says to refuse: negative or
overflowing sizes, Content-Length with Transfer-Encoding, duplicate Content-Length, obs-fold, bare LF. The runtime
is untrusted code and the agent may host other functions' sandboxes, so this module adds what a parser does not:
header and body limits enforced while reading (an endless chunk is never buffered), deadlines for stalled requests
and idle connections, a bound on connections and on pipelined requests, and a peer check (`admit`) so only the
sandbox's own processes are served. A runtime that dies or half-closes while waiting on /next has its request
cancelled, so the invocation it would have received goes to its successor instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import httptools

from ..rpc import runtime_pb2 as pb
from .session import SessionClosed

log = logging.getLogger(__name__)
PREFIX = "/2018-06-01"
NEXT_PATH = f"{PREFIX}/runtime/invocation/next"
INIT_ERROR_PATH = f"{PREFIX}/runtime/init/error"
RESTORE_NEXT_PATH = f"{PREFIX}/runtime/restore/next"  # SnapStart (RIE's rapi: /runtime/restore/{next,error})
RESTORE_ERROR_PATH = f"{PREFIX}/runtime/restore/error"
MAX_PAYLOAD = 6 * 1024 * 1024 + 100  # the Runtime API's limit (RIE interop/model.go)
MAX_HEADER = 1_100_000  # the request line and headers together; awslambdaric sends up to 1 MiB of X-Ray cause
# An oversized body is read and discarded up to this, so the runtime (still writing) sees the 413 instead of a reset;
# beyond it the connection is closed at once.
MAX_DRAIN = 25 * 1024 * 1024
HEAD_SLACK = 256 * 1024  # a read may carry the head's end and the body's start together
MAX_PIPELINED = 8  # requests parsed ahead of the one being served; a runtime client sends one at a time
MAX_CONNECTIONS = 32  # per sandbox: a runtime needs one or two
_INVOCATION_PATH = re.compile(rf"{PREFIX}/runtime/invocation/([^/]+)/(response|error)")
_REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 413: "Payload Too Large",
            431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}  # fmt: skip


@dataclass(frozen=True)
class Limits:
    """Deadlines of the Runtime API's connections (seconds). A runtime waiting in /next is never timed out."""

    stall: float = 10.0  # a request started but no byte of it for this long
    read: float = 60.0  # a request not complete this long after its first byte
    idle: float = 600.0  # a keep-alive connection with no request (awslambdaric keeps one open between invocations)


class InvalidState(Exception):
    """The runtime called the API out of order."""


class UnknownRequest(Exception):
    """The runtime named a request id that is not the current invocation."""


class RuntimeHost(Protocol):
    """What the Runtime API needs from the sandbox behind it."""

    async def next_invocation(self) -> tuple[pb.Invocation, int]:
        """Block until there is work; returns the invocation and its deadline (epoch ms)."""
        ...

    async def post_response(self, request_id: str, body: bytes) -> None: ...

    async def post_error(self, request_id: str, body: bytes, error_type_header: str | None) -> None: ...

    async def post_init_error(self, body: bytes, error_type_header: str | None) -> None: ...

    async def restore_next(self) -> None:
        """SnapStart: the runtime is initialised and ready to be restored; returns once it is."""
        ...

    async def post_restore_error(self, body: bytes, error_type_header: str | None) -> None: ...

    async def payload_too_large(self, request_id: str, size: int, *, error: bool) -> None:
        """The runtime posted a response (or, with `error`, an error) larger than the Runtime API accepts."""
        ...


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes = b""
    too_large: int | None = None  # the size of a body over the limit (counted while read, never kept)


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False


def invocation_headers(inv: pb.Invocation, deadline_ms: int) -> dict[str, str]:
    headers = {
        "Lambda-Runtime-Aws-Request-Id": inv.request_id,
        "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
        "Lambda-Runtime-Invoked-Function-Arn": inv.invoked_function_arn,
        "Lambda-Runtime-Trace-Id": inv.trace_id,
        "Lambda-Runtime-Client-Context": inv.client_context,
        "Lambda-Runtime-Cognito-Identity": inv.cognito_identity,
    }
    # Like RIE: a header with an empty value is left out rather than sent empty.
    return {k: v for k, v in headers.items() if v}


def _error(status: int, error_type: str, message: str, *, close: bool = False) -> Response:
    return Response(status, json.dumps({"errorMessage": message, "errorType": error_type}).encode(), close=close)


_ACCEPTED = b'{"status":"OK"}'


def _too_large_message() -> str:
    return f"Exceeded maximum allowed payload size ({MAX_PAYLOAD} bytes)."


async def handle(host: RuntimeHost, request: Request) -> Response:
    """Route one request to the sandbox (pure of any I/O but the host's)."""
    path = request.path.split("?", 1)[0]
    try:
        if path == NEXT_PATH:
            if request.method != "GET":
                return _error(405, "MethodNotAllowed", "use GET")
            inv, deadline_ms = await host.next_invocation()
            return Response(200, inv.payload, invocation_headers(inv, deadline_ms))
        if path == f"{PREFIX}/ping":
            return Response(200, b"pong")
        error_type = request.headers.get("lambda-runtime-function-error-type")
        if path == RESTORE_NEXT_PATH:
            if request.method != "GET":
                return _error(405, "MethodNotAllowed", "use GET")
            await host.restore_next()
            return Response(200, b"")
        if path in (INIT_ERROR_PATH, RESTORE_ERROR_PATH) and request.method == "POST":
            if request.too_large is not None:
                return _error(413, "RequestEntityTooLarge", _too_large_message(), close=True)
            post = host.post_init_error if path == INIT_ERROR_PATH else host.post_restore_error
            await post(request.body, error_type)
            return Response(202, _ACCEPTED)
        match = _INVOCATION_PATH.fullmatch(path)
        if match is None:
            return _error(404, "NotFound", f"no such path: {path}")
        if request.method != "POST":
            return _error(405, "MethodNotAllowed", "use POST")
        request_id, kind = match.groups()
        if request.too_large is not None:
            await host.payload_too_large(request_id, request.too_large, error=kind == "error")
            return _error(413, "RequestEntityTooLarge", _too_large_message(), close=True)
        if kind == "response":
            await host.post_response(request_id, request.body)
        else:
            await host.post_error(request_id, request.body, error_type)
        return Response(202, _ACCEPTED)
    except UnknownRequest:
        return _error(400, "InvalidRequestID", "Invalid request ID")
    except InvalidState as exc:
        return _error(403, "InvalidStateTransition", str(exc))
    except SessionClosed:
        # Per the Runtime API, a 500 on /next tells the runtime to exit; the sandbox is going away.
        return _error(500, "Runtime.SandboxStopped", "the sandbox is shutting down", close=True)


class _Refused(Exception):
    """Raised from a parser callback: stop parsing; answer `response` (if any, else what was queued) and close."""

    def __init__(self, response: Response | None) -> None:
        self.response = response


class _Connection(asyncio.Protocol):
    """One runtime connection: llhttp parses, requests are served one at a time in order."""

    def __init__(self, server: RuntimeAPIServer) -> None:
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._requests: deque[Request] = deque()
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # The request being parsed
        self._url = bytearray()
        self._headers: dict[str, str] = {}
        self._head_size = 0
        self._body = bytearray()
        self._body_size = 0
        # Deadlines: when the current request's first byte came, when its last byte came, when we went idle
        now = server.clock()
        self._receiving_since: float | None = None
        self._last_byte = now
        self._idle_since: float | None = now
        self._serving = False
        self._in_next = False  # the request being served waits in /next (only that may be cancelled)
        # Bytes of the current request head, counted as they arrive: llhttp buffers a header line itself until its
        # end, so a limit checked per parsed header would let a line that never ends grow without bound.
        self._in_head = True
        self._head_bytes = 0

    # ---- asyncio.Protocol ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if len(self._server.connections) >= MAX_CONNECTIONS:
            self._reply(_error(503, "TooManyConnections", "too many Runtime API connections", close=True))
            return
        if not self._server.admit(transport):
            peer = transport.get_extra_info("peername")
            log.warning("Runtime API: refused a connection from outside the sandbox (%s)", peer)
            self._closing = True
            transport.abort()
            return
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._closing = True
        self._cancel_next()  # a /next whose runtime died: its invocation goes to the next caller

    def _cancel_next(self) -> None:
        """Cancel the request being served if it waits in /next. A result being posted is never cut short: its
        invocation has already ended, and the report must reach the gateway."""
        if self._task is not None and not self._task.done() and self._in_next:
            self._task.cancel()

    def eof_received(self) -> bool:
        # A half-closed runtime cannot be relied on to read an invocation: treat it as gone (close our side too).
        return False

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._last_byte = self._server.clock()
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEADER + HEAD_SLACK:
                self._refuse(_error(431, "RequestHeaderFieldsTooLarge", "request headers too large"))
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if not isinstance(cause, _Refused):
                raise
            if cause.response is not None:
                self._refuse(cause.response)
                return
            # Serve what was queued (it answers and closes), read nothing more.
            assert self._transport is not None
            self._transport.pause_reading()
        except httptools.HttpParserUpgrade:
            self._refuse(_error(400, "BadRequest", "protocol upgrades are not supported"))
            return
        except httptools.HttpParserError as exc:
            self._refuse(_error(400, "BadRequest", f"malformed request: {exc}"))
            return
        if len(self._requests) > MAX_PIPELINED:
            self._refuse(_error(400, "BadRequest", "too many pipelined requests"))
            return
        if self._requests and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._serve())

    # ---- llhttp callbacks ------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._receiving_since = self._last_byte
        self._idle_since = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text

    def on_headers_complete(self) -> None:
        self._in_head = False
        encoding = self._headers.get("transfer-encoding")
        if encoding is not None and encoding.strip().lower() != "chunked":
            # llhttp accepts e.g. "gzip, chunked"; the Runtime API has no use for codings, so say so plainly.
            raise _Refused(_error(400, "BadRequest", f"unsupported Transfer-Encoding {encoding!r}"))

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size <= MAX_PAYLOAD:
            self._body += body
            return
        self._body.clear()  # over the limit: count, never keep
        if self._body_size > MAX_DRAIN:
            # Still going (an endless chunk): end the request here; it is answered with a 413 and the connection closed.
            self.on_message_complete()
            raise _Refused(None)

    def on_message_complete(self) -> None:
        method = self._parser.get_method().decode("latin-1")
        path = self._url.decode("latin-1")
        if self._body_size > MAX_PAYLOAD:
            request = Request(method, path, self._headers, too_large=self._body_size)
        else:
            request = Request(method, path, self._headers, bytes(self._body))
        if not self._parser.should_keep_alive():
            request.headers["connection"] = "close"
        self._requests.append(request)
        self._url = bytearray()
        self._headers = {}
        self._head_size = 0
        self._body = bytearray()
        self._body_size = 0
        self._receiving_since = None
        self._in_head = True
        self._head_bytes = 0

    def _count_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > MAX_HEADER:
            raise _Refused(_error(431, "RequestHeaderFieldsTooLarge", "request headers too large"))

    # ---- serving ---------------------------------------------------------------------------------------------

    async def _serve(self) -> None:
        while self._requests and not self._closing:
            request = self._requests.popleft()
            self._serving = True
            self._in_next = request.path.split("?", 1)[0] == NEXT_PATH
            try:
                response = await handle(self._server.host, request)
            except Exception as exc:  # a bug in the agent: answer (a runtime must never hang on us) and say so
                log.exception("Runtime API request %s %s failed", request.method, request.path)
                response = _error(500, "Runtime.AgentError", f"{type(exc).__name__}: {exc}", close=True)
            finally:
                self._serving = False
                self._in_next = False
            if request.headers.get("connection", "").lower() == "close" or request.too_large is not None:
                response.close = True
            self._reply(response)
            if response.close:
                return
        if not self._requests and self._receiving_since is None:
            self._idle_since = self._server.clock()

    def _refuse(self, response: Response) -> None:
        """A protocol error: nothing after it on this connection can be trusted; answer it and close."""
        self._requests.clear()
        self._cancel_next()
        response.close = True
        self._reply(response)

    def _reply(self, response: Response) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        head = [f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Unknown')}",
                "Content-Type: application/json", f"Content-Length: {len(response.body)}"]  # fmt: skip
        head += [f"{name}: {value}" for name, value in response.headers.items()]
        if response.close:
            head.append("Connection: close")
        transport.write("\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + response.body)
        if response.close:
            self._closing = True
            transport.close()

    def expire(self, now: float, limits: Limits) -> None:
        """Close the connection if it broke a deadline (called by the server's sweep)."""
        if self._closing or self._transport is None:
            return
        if self._receiving_since is not None:
            if now - self._last_byte > limits.stall or now - self._receiving_since > limits.read:
                self._refuse(_error(408, "RequestTimeout", "the request was not received in time"))
        elif self._idle_since is not None and not self._serving and now - self._idle_since > limits.idle:
            self._closing = True
            self._transport.close()


def admit_any(transport: asyncio.BaseTransport) -> bool:
    return True


class RuntimeAPIServer:
    def __init__(
        self,
        host: RuntimeHost,
        *,
        limits: Limits = Limits(),
        admit: Callable[[asyncio.BaseTransport], bool] = admit_any,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.limits = limits
        self.admit = admit  # whether a new connection comes from the sandbox's own processes
        self.clock = clock
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, port: int = 0) -> int:
        """Listen on a loopback port (0: an ephemeral one); returns it."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), "127.0.0.1", port)
        self._sweeper = loop.create_task(self._sweep())
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def _sweep(self) -> None:
        period = min(1.0, self.limits.stall / 2)
        while True:
            await asyncio.sleep(period)
            now = self.clock()
            for connection in list(self.connections):
                connection.expire(now, self.limits)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
            for connection in list(self.connections):
                connection.connection_lost(None)
                if connection._transport is not None:
                    connection._transport.close()
            await self._server.wait_closed()
