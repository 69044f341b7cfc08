"""The HTTP Lambda Runtime API (2018-06-01) that an unmodified runtime client talks to, on 127.0.0.1.

Exactly what awslambdaric and custom `bootstrap` runtimes expect: `Content-Type: application/json` with no charset
on /next (else awslambdaric hands the handler bytes), 202 `{"status":"OK"}` for posts, 400 InvalidRequestID for a
stale id, 403 InvalidStateTransition for a call out of order, 413 for an oversized response, and header limits big
enough for the 1 MiB X-Ray error-cause header awslambdaric sends with errors.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Protocol

from aiohttp import web

from ..rpc import runtime_pb2 as pb
from .session import SessionClosed

PREFIX = "/2018-06-01"
MAX_PAYLOAD = 6 * 1024 * 1024 + 100  # the Runtime API's limit (RIE interop/model.go)
MAX_HEADER = 1_100_000


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


def _error(status: int, error_type: str, message: str) -> web.Response:
    body = json.dumps({"errorMessage": message, "errorType": error_type}).encode()
    return web.Response(status=status, body=body, content_type="application/json")


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


def create_app(host: RuntimeHost) -> web.Application:
    app = web.Application(client_max_size=MAX_PAYLOAD + 1)

    async def next_(request: web.Request) -> web.StreamResponse:
        try:
            inv, deadline_ms = await host.next_invocation()
        except InvalidState as exc:
            return _error(403, "InvalidStateTransition", str(exc))
        except SessionClosed:
            # Per the Runtime API, a 500 on /next tells the runtime to exit; the sandbox is going away.
            return _error(500, "Runtime.SandboxStopped", "the sandbox is shutting down")
        return web.Response(
            status=200, body=inv.payload, headers=invocation_headers(inv, deadline_ms), content_type="application/json"
        )

    async def response(request: web.Request) -> web.StreamResponse:
        request_id = request.match_info["request_id"]
        if request.content_length is not None and request.content_length > MAX_PAYLOAD:
            await host.payload_too_large(request_id, request.content_length)
            return _error(413, "RequestEntityTooLarge", f"Exceeded maximum allowed payload size ({MAX_PAYLOAD} bytes).")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            await host.payload_too_large(request_id, MAX_PAYLOAD + 1)
            return _error(413, "RequestEntityTooLarge", f"Exceeded maximum allowed payload size ({MAX_PAYLOAD} bytes).")
        return await _guarded(host.post_response(request_id, body))

    async def error(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        header = request.headers.get("Lambda-Runtime-Function-Error-Type")
        return await _guarded(host.post_error(request.match_info["request_id"], body, header))

    async def init_error(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        header = request.headers.get("Lambda-Runtime-Function-Error-Type")
        return await _guarded(host.post_init_error(body, header))

    async def ping(request: web.Request) -> web.StreamResponse:
        return web.Response(text="pong")

    app.router.add_get(f"{PREFIX}/runtime/invocation/next", next_)
    app.router.add_post(f"{PREFIX}/runtime/invocation/{{request_id}}/response", response)
    app.router.add_post(f"{PREFIX}/runtime/invocation/{{request_id}}/error", error)
    app.router.add_post(f"{PREFIX}/runtime/init/error", init_error)
    app.router.add_get(f"{PREFIX}/ping", ping)
    return app


async def _guarded(action: Awaitable[None]) -> web.Response:
    try:
        await action
    except UnknownRequest:
        return _error(400, "InvalidRequestID", "Invalid request ID")
    except InvalidState as exc:
        return _error(403, "InvalidStateTransition", str(exc))
    return web.Response(status=202, body=b'{"status":"OK"}', content_type="application/json")


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    """Start the API on an ephemeral loopback port; returns the runner (to clean up) and the port."""
    runner = web.AppRunner(
        app, access_log=None, max_field_size=MAX_HEADER, max_line_size=MAX_HEADER, shutdown_timeout=0.5
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None and server.sockets  # type: ignore[attr-defined]
    port: int = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, port
