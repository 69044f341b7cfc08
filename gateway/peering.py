"""The replicas' internal hop: a replica that does not own a function asks the owner to run the invocation.

    POST /kambda/internal/v1/run?function=<namespace/name>&version=<version>
    X-Kambda-Peer: <unix seconds> <hex HMAC-SHA256 under the peer key of: seconds, function, version, body digest>
    body: runtime.proto `Invocation` (payload, request id, ARN, trace, client context, tail logs)

    200  X-Kambda-Outcome: response | error, body: `Response` | `Error` (payload, report, log tail)
    429  X-Kambda-Throttle: <Lambda's Reason>     421  not the owner (nothing ran)
    503  X-Kambda-No-Instance                    404  no such version here (nothing ran)

The peer key is derived from the signing key every replica already shares (the chart's Secret), so no new secret is
needed, and it never equals a function's runtime credential (those are HMACs of `namespace/name`, which cannot
contain the derivation's label). Protobuf rather than JSON: the payload travels as bytes, without base64.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time

import aiohttp
from aiohttp import web
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]  # no stubs shipped

from kambda.runtime.rpc import runtime_pb2 as pb

from .connections import read_body
from .dispatching import Invocation, Moved, NoInstance, Outcome
from .invoking import Invoker, Throttled
from .leases import Ownership, Peer
from .placement import NotOwner, NotYet, OwnerLost, Unreachable
from .registry import FunctionVersion, Registry

log = logging.getLogger(__name__)
ROUTE = "/kambda/internal/v1/run"
PEER_HEADER = "X-Kambda-Peer"
SKEW_SECONDS = 60.0  # a signed request older (or newer) than this is refused
MAX_BODY = 8 * 1024 * 1024  # a 6 MB payload and the rest of the Invocation
CONNECT_TIMEOUT = 2.0
ANSWER_MARGIN = 30.0  # beyond the owner's own bounds (its grace for a silent instance is 10 s)


def peer_key(signing_key: bytes) -> bytes:
    return hmac.new(signing_key, b"kambda peer hop\n", hashlib.sha256).digest()


def signature(key: bytes, seconds: int, function: str, version: str, body: bytes) -> str:
    message = f"{seconds}\n{function}\n{version}\n{hashlib.sha256(body).hexdigest()}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def encode(invocation: Invocation) -> bytes:
    message = pb.Invocation(
        request_id=invocation.request_id,
        invoked_function_arn=invocation.invoked_arn,
        trace_id=invocation.trace_id,
        client_context=invocation.client_context,
        cognito_identity=invocation.cognito_identity,
        payload=invocation.payload,
        tail_logs=invocation.tail_logs,
    )
    data: bytes = message.SerializeToString()
    return data


def decode(body: bytes) -> Invocation:
    message = pb.Invocation.FromString(body)
    return Invocation(
        request_id=message.request_id,
        payload=message.payload,
        invoked_arn=message.invoked_function_arn,
        trace_id=message.trace_id,
        client_context=message.client_context,
        cognito_identity=message.cognito_identity,
        tail_logs=message.tail_logs,
    )


class PeerClient:
    """The Forwarder of `placement.Placement`: one keep-alive connection pool to the other replicas."""

    def __init__(self, signing_key: bytes, *, queue_timeout: float) -> None:
        self._key = peer_key(signing_key)
        self._queue_timeout = queue_timeout
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def run(self, peer: Peer, version: FunctionVersion, invocation: Invocation) -> Outcome:
        if self._session is None:
            # No limit of its own on connections: the owner's admission bounds what runs (aiohttp's default 100
            # would queue forwards without bound behind it).
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
        # The owner answers within the queue timeout, the function's timeout and the grace; an owner whose node
        # vanished (no FIN, no RST) is given up on after that, instead of the kernel's ~15 min of retransmits.
        answer_within = self._queue_timeout + version.spec.timeout_seconds + ANSWER_MARGIN
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=answer_within)
        body = encode(invocation)
        seconds = int(time.time())
        headers = {
            PEER_HEADER: f"{seconds} {signature(self._key, seconds, version.function, version.version, body)}",
            "Content-Type": "application/x-protobuf",
        }
        url = f"http://{peer.http}{ROUTE}"
        params = {"function": version.function, "version": version.version}
        try:
            response = await self._session.post(url, params=params, data=body, headers=headers, timeout=timeout)
        except aiohttp.ClientConnectionError as exc:
            # Refused, reset, or closed before an answer: the owner is gone (or a pooled connection was stale). The
            # invocation goes to the next owner: had it started here, that is what the SDK's retry of a 5xx does.
            raise Unreachable(str(exc) or type(exc).__name__) from None
        except aiohttp.ClientError as exc:
            raise OwnerLost(str(exc) or type(exc).__name__) from None
        async with response:
            try:
                data = await response.read()
            except aiohttp.ClientError as exc:
                raise OwnerLost(str(exc) or type(exc).__name__) from None
            return _outcome(response, data)


def _outcome(response: aiohttp.ClientResponse, data: bytes) -> Outcome:
    if response.status == 200:
        try:
            if response.headers.get("X-Kambda-Outcome") == "error":
                error = pb.Error.FromString(data)
                return Outcome(error.payload, error.error_type, error.report, error.log_tail)
            result = pb.Response.FromString(data)
        except DecodeError:
            raise OwnerLost("the owner's answer is not an Outcome") from None
        return Outcome(result.payload, None, result.report, result.log_tail)
    if response.status == 429:
        raise Throttled(response.headers.get("X-Kambda-Throttle", ""))
    if response.status == 503 and "X-Kambda-No-Instance" in response.headers:
        raise NoInstance()
    if response.status == 404:
        raise NotYet(data[:200].decode(errors="replace"))
    if response.status == 421:
        raise NotOwner(data[:200].decode(errors="replace"))
    raise OwnerLost(f"{response.status}: {data[:200].decode(errors='replace')}")


class PeerAPI:
    """The owner's end of the hop."""

    def __init__(self, registry: Registry, ownership: Ownership, invoker: Invoker, signing_key: bytes) -> None:
        self._registry = registry
        self._ownership = ownership
        self._invoker = invoker
        self._key = peer_key(signing_key)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post(ROUTE, self.run)

    async def run(self, request: web.Request) -> web.StreamResponse:
        function = request.query.get("function", "")
        version_name = request.query.get("version", "")
        claimed = _claim(request.headers.get(PEER_HEADER, ""))
        if claimed is None:  # refused before the body is read: no signature, or not a fresh one
            return web.Response(status=401, text="not signed by a replica")
        body = await read_body(request, limit=MAX_BODY, timeout=30.0, too_large="invocation too large")
        seconds, presented = claimed
        expected = signature(self._key, seconds, function, version_name, body)
        if not hmac.compare_digest(expected, presented):
            return web.Response(status=401, text="not signed by a replica")
        if not self._ownership.is_mine(function):
            return web.Response(status=421, text=f"{self._ownership.me.identity} does not own {function}")
        version = self._registry.by_key(function, version_name)
        if version is None:
            return web.Response(status=404, text=f"{function} version {version_name} is not known here")
        try:
            invocation = decode(body)
        except DecodeError:
            return web.Response(status=400, text="the body is not a runtime.proto Invocation")
        try:
            outcome = await self._invoker.run(version, invocation)
        except Throttled as exc:
            return web.Response(status=429, headers={"X-Kambda-Throttle": exc.reason})
        except NoInstance:
            return web.Response(status=503, headers={"X-Kambda-No-Instance": "1"})
        except Moved:
            return web.Response(status=421, text=f"{function} moved to another replica while it waited")
        if outcome.error_type is None:
            message: pb.Response | pb.Error = pb.Response(
                payload=outcome.payload, report=outcome.report, log_tail=outcome.log_tail
            )
        else:
            message = pb.Error(
                error_type=outcome.error_type, payload=outcome.payload, report=outcome.report, log_tail=outcome.log_tail
            )
        kind = "response" if outcome.error_type is None else "error"
        return web.Response(body=message.SerializeToString(), headers={"X-Kambda-Outcome": kind})


def _claim(header: str) -> tuple[int, str] | None:
    """(seconds, signature) of a peer header whose time is within the window, else None."""
    seconds_text, _, presented = header.partition(" ")
    # Shapes checked first: hmac.compare_digest refuses non-ASCII text, and a huge number overflows a float.
    if not (seconds_text.isdigit() and len(seconds_text) <= 12 and len(presented) == 64 and presented.isascii()):
        return None
    seconds = int(seconds_text)
    if abs(time.time() - seconds) > SKEW_SECONDS:
        return None
    return seconds, presented
