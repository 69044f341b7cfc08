"""The Lambda Invoke API: `POST /2015-03-31/functions/{FunctionName}/invocations`, as boto3 speaks it.

Validation order follows what a caller can fix: the name, the headers, the function's existence, the payload, then
capacity. Every refusal is an `errors.AWSError`, raised here and rendered by the app's middleware; a function error
is still a 200 with `X-Amz-Function-Error`, because that is what Lambda's clients expect.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from kambda import jsontext, naming

from . import errors
from .connections import read_body
from .dispatching import Invocation, NoInstance
from .invoking import Throttled
from .metrics import Metrics
from .placement import NoOwner, OwnerLost, Placement
from .queueing import Event, EventQueue
from .registry import FunctionVersion, NotFound, Registry
from .settings import GatewaySettings

INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")
LOG_TYPES = ("None", "Tail")
MAX_CLIENT_CONTEXT = 3583
MAX_HEADERS_BYTES = 16 * 1024


@dataclass(frozen=True)
class InvokeRequest:
    version: FunctionVersion
    invocation_type: str
    tail_logs: bool
    client_context: str
    trace_id: str
    payload: bytes
    arn: str
    qualifier: str | None


def new_trace_id() -> str:
    return f"Root=1-{int(time.time()):08x}-{os.urandom(12).hex()};Parent={os.urandom(8).hex()};Sampled=0"


class InvokeAPI:
    def __init__(
        self,
        settings: GatewaySettings,
        registry: Registry,
        placement: Placement,
        metrics: Metrics,
        queue: EventQueue,
        on_enqueued: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._placement = placement
        self._metrics = metrics
        self._queue = queue
        self._on_enqueued = on_enqueued  # wakes the deliverer

    def arn(self, name: str, qualifier: str | None = None) -> str:
        return naming.function_arn(self._settings.region, self._settings.account_id, name, qualifier)

    async def invoke(self, request: web.Request) -> web.StreamResponse:
        request_id = str(uuid.uuid4())
        parsed = await self._parse(request)
        if parsed.invocation_type == "DryRun":
            return web.Response(status=204, headers={"x-amzn-RequestId": request_id})
        if parsed.invocation_type == "Event":
            return await self.enqueue(parsed, request_id)
        return await self.run_sync(parsed, request_id)

    async def enqueue(self, req: InvokeRequest, request_id: str) -> web.StreamResponse:
        """Asynchronous invocation: 202 only once the event is durably queued."""
        limit = self._settings.max_async_payload
        if len(req.payload) > limit:
            raise errors.too_large(
                f"{len(req.payload)} byte payload is too large for the Event invocation type (limit {limit} bytes)"
            )
        event = Event(
            request_id=request_id,
            function=req.version.spec.name,
            qualifier=req.qualifier,
            payload=req.payload,
            enqueued_at=time.time(),
            trace_id=req.trace_id,
        )
        try:
            await self._queue.enqueue(event)
        except Exception as exc:  # nothing was stored: say so, never a 202
            raise errors.service_error(f"Could not queue the event: {type(exc).__name__}: {exc}") from exc
        self._metrics.events_enqueued.labels(req.version.spec.name).inc()
        self._on_enqueued()
        return web.Response(status=202, headers={"x-amzn-RequestId": request_id})

    async def _parse(self, request: web.Request) -> InvokeRequest:
        if sum(len(k) + len(v) for k, v in request.raw_headers) > MAX_HEADERS_BYTES:
            raise errors.AWSError(431, "RequestHeaderFieldsTooLargeException", "Request headers too large")
        try:
            ref = naming.parse_function_ref(request.match_info["name"], request.query.get("Qualifier"))
        except naming.InvalidReference as exc:
            raise errors.invalid_parameter(str(exc)) from None
        invocation_type = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if invocation_type not in INVOCATION_TYPES:
            raise errors.invalid_parameter(f"X-Amz-Invocation-Type must be one of {', '.join(INVOCATION_TYPES)}")
        log_type = request.headers.get("X-Amz-Log-Type", "None")
        if log_type not in LOG_TYPES:
            raise errors.invalid_parameter("X-Amz-Log-Type must be None or Tail")
        client_context = _client_context(request.headers.get("X-Amz-Client-Context"))
        try:
            version = self._registry.resolve(ref)
        except NotFound:
            raise errors.not_found(self.arn(ref.name, ref.qualifier)) from None
        payload = await self._read_payload(request, invocation_type)
        return InvokeRequest(
            version=version,
            invocation_type=invocation_type,
            tail_logs=log_type == "Tail",
            client_context=client_context,
            trace_id=request.headers.get("X-Amzn-Trace-Id") or new_trace_id(),
            payload=payload,
            arn=self.arn(ref.name, ref.qualifier),
            qualifier=ref.qualifier,
        )

    async def _read_payload(self, request: web.Request, invocation_type: str) -> bytes:
        if invocation_type == "Event":
            limit = self._settings.max_async_payload
            size = request.content_length or limit + 1
            message = f"{size} byte payload is too large for the Event invocation type (limit {limit} bytes)"
        else:
            limit = self._settings.max_sync_payload
            message = f"Request must be smaller than {limit} bytes for the InvokeFunction operation"
        body = await read_body(request, limit=limit, timeout=self._settings.body_timeout, too_large=message)
        if not body.strip():
            return b"{}"  # boto3 sends an empty body for no payload; Lambda hands the handler {}
        try:
            jsontext.loads(body)
        except jsontext.InvalidJSON as exc:
            raise errors.invalid_content(f"Could not parse request body into json: {exc}") from None
        return body

    async def run_sync(self, req: InvokeRequest, request_id: str) -> web.StreamResponse:
        spec = req.version.spec
        invocation = Invocation(
            request_id=request_id,
            payload=req.payload,
            invoked_arn=req.arn,
            trace_id=req.trace_id,
            client_context=req.client_context,
            tail_logs=req.tail_logs,
        )
        try:
            outcome = await self._placement.run(req.version, invocation)
        except Throttled as exc:
            raise errors.throttled(exc.reason) from None
        except NoInstance:
            raise errors.AWSError(
                502,
                "ResourceNotReadyException",
                f"No instance of {spec.name} became ready within {self._settings.queue_timeout:g} seconds",
            ) from None
        except NoOwner:
            raise errors.unavailable(f"No gateway replica serves {spec.name} at the moment") from None
        except OwnerLost as exc:
            raise errors.AWSError(502, "ServiceException", f"The gateway replica running it was lost: {exc}") from None
        headers = {
            "X-Amz-Executed-Version": req.version.version,
            "x-amzn-RequestId": request_id,
        }
        if outcome.error_type is not None:
            headers["X-Amz-Function-Error"] = "Unhandled"
        if req.tail_logs:
            headers["X-Amz-Log-Result"] = base64.b64encode(outcome.log_tail).decode()
        return web.Response(status=200, body=outcome.payload, headers=headers, content_type="application/json")


def _client_context(header: str | None) -> str:
    if not header:
        return ""
    if len(header) > MAX_CLIENT_CONTEXT:
        raise errors.invalid_content(f"Client context must be at most {MAX_CLIENT_CONTEXT} bytes")
    try:
        raw = base64.b64decode(header, validate=True)
        if not isinstance(jsontext.loads(raw), dict):
            raise ValueError("not an object")
    except (binascii.Error, ValueError):  # jsontext.InvalidJSON is a ValueError
        raise errors.invalid_content("Client context must be a valid Base64-encoded JSON object.") from None
    return jsontext.decode(raw)
