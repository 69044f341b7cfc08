"""The HTTP Lambda Runtime API (2018-06-01) that an unmodified runtime client talks to, on 127.0.0.1.

Exactly what awslambdaric and custom `bootstrap` runtimes expect: `Content-Type: application/json` with no charset
on /next (else awslambdaric hands the handler bytes), 202 `{"status":"OK"}` for posts, 400 InvalidRequestID for a
stale id, 403 InvalidStateTransition for a call out of order, 413 for an oversized response, and header limits big
enough for the 1 MiB X-Ray error-cause header awslambdaric sends with errors.

It is a small HTTP/1.1 server on asyncio's protocol layer rather than aiohttp: it sits on the invocation path twice
per invocation (/next and /response), serves one local client that never pipelines, and the agent starting in a
pod should not spend a quarter of a second importing an HTTP client it never uses. It speaks keep-alive,
Content-Length and chunked bodies; a runtime that dies while waiting on /next has its request cancelled, so the
invocation it would have received goes to its successor instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from ..rpc import runtime_pb2 as pb
from .session import SessionClosed

log = logging.getLogger(__name__)
PREFIX = "/2018-06-01"
MAX_PAYLOAD = 6 * 1024 * 1024 + 100  # the Runtime API's limit (RIE interop/model.go)
MAX_HEADER = 1_100_000
_INVOCATION_PATH = re.compile(rf"^{PREFIX}/runtime/invocation/([^/]+)/(response|error)$")
_REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 413: "Payload Too Large", 431: "Request Header Fields Too Large",
            500: "Internal Server Error"}  # fmt: skip


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

    async def payload_too_large(self, request_id: str, size: int) -> None: ...


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes = b""
    too_large: int | None = None  # the declared size of a body that was refused unread


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


async def handle(host: RuntimeHost, request: Request) -> Response:
    """Route one request to the sandbox (pure of any I/O but the host's)."""
    path = request.path.split("?", 1)[0]
    try:
        if path == f"{PREFIX}/runtime/invocation/next":
            if request.method != "GET":
                return _error(405, "MethodNotAllowed", "use GET")
            inv, deadline_ms = await host.next_invocation()
            return Response(200, inv.payload, invocation_headers(inv, deadline_ms))
        if path == f"{PREFIX}/ping":
            return Response(200, b"pong")
        error_type = request.headers.get("lambda-runtime-function-error-type")
        if path == f"{PREFIX}/runtime/init/error" and request.method == "POST":
            await host.post_init_error(request.body, error_type)
            return Response(202, _ACCEPTED)
        match = _INVOCATION_PATH.match(path)
        if match is None:
            return _error(404, "NotFound", f"no such path: {path}")
        if request.method != "POST":
            return _error(405, "MethodNotAllowed", "use POST")
        request_id, kind = match.groups()
        if kind == "response":
            if request.too_large is not None:
                await host.payload_too_large(request_id, request.too_large)
                message = f"Exceeded maximum allowed payload size ({MAX_PAYLOAD} bytes)."
                return _error(413, "RequestEntityTooLarge", message, close=True)
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


class _Connection(asyncio.Protocol):
    def __init__(self, server: RuntimeAPIServer) -> None:
        self._server = server
        self._buffer = bytearray()
        self._requests: deque[Request] = deque()
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._closing = True
        if self._task is not None:
            self._task.cancel()  # e.g. a /next whose runtime died: its invocation goes to the next caller

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            while (request := self._parse()) is not None:
                self._requests.append(request)
        except ValueError as exc:
            self._reply(_error(400, "BadRequest", str(exc), close=True))
            return
        except OverflowError:
            self._reply(_error(431, "RequestHeaderFieldsTooLarge", "request headers too large", close=True))
            return
        if self._requests and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._serve())

    def _parse(self) -> Request | None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEADER:
                raise OverflowError()
            return None
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            raise ValueError(f"malformed request line {lines[0]!r}") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"malformed header {line!r}")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        body_start = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parsed = self._chunked(body_start)
            if parsed is None:
                return None
            body, consumed = parsed
            if len(body) > MAX_PAYLOAD:
                del self._buffer[:consumed]
                return Request(method, target, headers, too_large=len(body))
            del self._buffer[:consumed]
            return Request(method, target, headers, body)
        length = int(headers.get("content-length") or 0)
        if length > MAX_PAYLOAD:
            # Refused unread; the connection is closed after the 413, so the rest never needs reading.
            self._buffer.clear()
            return Request(method, target, headers, too_large=length)
        if len(self._buffer) < body_start + length:
            return None
        body = bytes(self._buffer[body_start : body_start + length])
        del self._buffer[: body_start + length]
        return Request(method, target, headers, body)

    def _chunked(self, start: int) -> tuple[bytes, int] | None:
        body = bytearray()
        position = start
        while True:
            line_end = self._buffer.find(b"\r\n", position)
            if line_end < 0:
                return None
            size = int(bytes(self._buffer[position:line_end]).split(b";", 1)[0], 16)
            position = line_end + 2
            if size == 0:
                trailer_end = self._buffer.find(b"\r\n\r\n", position - 2)
                return (bytes(body), trailer_end + 4) if trailer_end >= 0 else None
            if len(self._buffer) < position + size + 2:
                return None
            body += self._buffer[position : position + size]
            position += size + 2
            if len(body) > MAX_PAYLOAD:
                return (bytes(body), position)  # reported too large; the connection closes after the 413

    async def _serve(self) -> None:
        while self._requests and not self._closing:
            request = self._requests.popleft()
            try:
                response = await handle(self._server.host, request)
            except Exception as exc:  # a bug in the agent: answer (a runtime must never hang on us) and say so
                log.exception("Runtime API request %s %s failed", request.method, request.path)
                response = _error(500, "Runtime.AgentError", f"{type(exc).__name__}: {exc}", close=True)
            if request.headers.get("connection", "").lower() == "close" or request.too_large is not None:
                response.close = True
            self._reply(response)
            if response.close:
                return

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


class RuntimeAPIServer:
    def __init__(self, host: RuntimeHost) -> None:
        self.host = host
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen on an ephemeral loopback port; returns it."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for connection in list(self.connections):
                connection.connection_lost(None)
                if connection._transport is not None:
                    connection._transport.close()
            await self._server.wait_closed()
