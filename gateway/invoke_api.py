"""The Lambda Invoke API: `POST /2015-03-31/functions/{FunctionName}/invocations`, as boto3 speaks it.

Validation order follows what a caller can fix: the name, the headers, the function's existence, the payload, then
capacity. Every refusal is an AWS-shaped error (`errors.py`); a function error is still a 200 with
`X-Amz-Function-Error`, because that is what Lambda's clients expect.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import time
import uuid
from dataclasses import dataclass

from aiohttp import web

from kambda import naming

from . import errors
from .admission import Admission
from .dispatching import Dispatcher, Invocation, NoInstance, Outcome
from .metrics import Metrics
from .registry import FunctionVersion, NotFound, Registry
from .settings import GatewaySettings

INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")
LOG_TYPES = ("None", "Tail")
MAX_CLIENT_CONTEXT = 3583
MAX_HEADERS_BYTES = 16 * 1024


class BadRequest(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


@dataclass(frozen=True)
class InvokeRequest:
    version: FunctionVersion
    invocation_type: str
    tail_logs: bool
    client_context: str
    trace_id: str
    payload: bytes
    arn: str


def new_trace_id() -> str:
    return f"Root=1-{int(time.time()):08x}-{os.urandom(12).hex()};Parent={os.urandom(8).hex()};Sampled=0"


class InvokeAPI:
    def __init__(
        self,
        settings: GatewaySettings,
        registry: Registry,
        dispatcher: Dispatcher,
        admission: Admission,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._dispatcher = dispatcher
        self._admission = admission
        self._metrics = metrics

    def arn(self, name: str, qualifier: str | None = None) -> str:
        return naming.function_arn(self._settings.region, self._settings.account_id, name, qualifier)

    async def invoke(self, request: web.Request) -> web.StreamResponse:
        request_id = str(uuid.uuid4())
        try:
            parsed = await self._parse(request)
        except BadRequest as bad:
            return bad.response
        if parsed.invocation_type == "DryRun":
            return web.Response(status=204, headers={"x-amzn-RequestId": request_id})
        if parsed.invocation_type == "Event":
            return errors.invalid_parameter("Event invocations are not supported by this gateway yet")
        return await self.run_sync(parsed, request_id)

    async def _parse(self, request: web.Request) -> InvokeRequest:
        if sum(len(k) + len(v) for k, v in request.raw_headers) > MAX_HEADERS_BYTES:
            raise BadRequest(errors.aws_error(431, "RequestHeaderFieldsTooLargeException", "Request headers too large"))
        try:
            ref = naming.parse_function_ref(request.match_info["name"], request.query.get("Qualifier"))
        except naming.InvalidReference as exc:
            raise BadRequest(errors.invalid_parameter(str(exc))) from None
        invocation_type = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if invocation_type not in INVOCATION_TYPES:
            raise BadRequest(
                errors.invalid_parameter(f"X-Amz-Invocation-Type must be one of {', '.join(INVOCATION_TYPES)}")
            )
        log_type = request.headers.get("X-Amz-Log-Type", "None")
        if log_type not in LOG_TYPES:
            raise BadRequest(errors.invalid_parameter("X-Amz-Log-Type must be None or Tail"))
        client_context = _client_context(request.headers.get("X-Amz-Client-Context"))
        try:
            version = self._registry.resolve(ref)
        except NotFound:
            raise BadRequest(errors.not_found(self.arn(ref.name, ref.qualifier))) from None
        payload = await self._read_payload(request)
        return InvokeRequest(
            version=version,
            invocation_type=invocation_type,
            tail_logs=log_type == "Tail",
            client_context=client_context,
            trace_id=request.headers.get("X-Amzn-Trace-Id") or new_trace_id(),
            payload=payload,
            arn=self.arn(ref.name, ref.qualifier),
        )

    async def _read_payload(self, request: web.Request) -> bytes:
        limit = self._settings.max_sync_payload
        too_large = errors.too_large(f"Request must be smaller than {limit} bytes for the InvokeFunction operation")
        if request.content_length is not None and request.content_length > limit:
            raise BadRequest(too_large)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BadRequest(too_large) from None
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise BadRequest(errors.invalid_content(f"Could not read the request body: {exc}")) from None
        if len(body) > limit:
            raise BadRequest(too_large)
        if not body.strip():
            return b"{}"  # boto3 sends an empty body for no payload; Lambda hands the handler {}
        try:
            json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(errors.invalid_content(f"Could not parse request body into json: {exc}")) from None
        return body

    async def run_sync(self, req: InvokeRequest, request_id: str) -> web.StreamResponse:
        spec = req.version.spec
        function = req.version.function
        reason = self._admission.try_acquire(function, spec.concurrency.reserved)
        if reason is not None:
            self._metrics.throttles.labels(spec.name, reason).inc()
            return errors.throttled(reason)
        try:
            outcome = await self.execute(req, request_id)
        finally:
            self._admission.release(function)
        if outcome is None:
            return errors.aws_error(
                502,
                "ResourceNotReadyException",
                f"No instance of {spec.name} became ready within {self._settings.queue_timeout:g} seconds",
            )
        headers = {
            "X-Amz-Executed-Version": req.version.version,
            "x-amzn-RequestId": request_id,
        }
        if outcome.error_type is not None:
            headers["X-Amz-Function-Error"] = "Unhandled"
        if req.tail_logs:
            headers["X-Amz-Log-Result"] = base64.b64encode(outcome.log_tail).decode()
        return web.Response(status=200, body=outcome.payload, headers=headers, content_type="application/json")

    async def execute(self, req: InvokeRequest, request_id: str) -> Outcome | None:
        """Dispatch one invocation and wait for its outcome; None if no instance took it in time."""
        version = req.version
        invocation = Invocation(
            request_id=request_id,
            payload=req.payload,
            invoked_arn=req.arn,
            trace_id=req.trace_id,
            client_context=req.client_context,
            tail_logs=req.tail_logs,
        )
        await self._dispatcher.submit(version, invocation)
        try:
            outcome = await invocation.future
        except NoInstance:
            return None
        self._record(version, outcome)
        return outcome

    def _record(self, version: FunctionVersion, outcome: Outcome) -> None:
        labels = (version.spec.name, version.version)
        m = self._metrics
        m.invocations.labels(*labels, "error" if outcome.error_type else "success").inc()
        report = outcome.report
        if report is not None:
            m.duration.labels(*labels).observe(report.duration_ms / 1000)
            if report.init_duration_ms > 0:
                m.cold_starts.labels(*labels).inc()
                m.init_duration.labels(*labels).observe(report.init_duration_ms / 1000)


def _client_context(header: str | None) -> str:
    if not header:
        return ""
    if len(header) > MAX_CLIENT_CONTEXT:
        raise BadRequest(errors.invalid_content(f"Client context must be at most {MAX_CLIENT_CONTEXT} bytes"))
    try:
        decoded = base64.b64decode(header, validate=True).decode()
        if not isinstance(json.loads(decoded), dict):
            raise ValueError("not an object")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise BadRequest(errors.invalid_content("Client context must be a valid Base64-encoded JSON object.")) from None
    return decoded
