"""Authentication and authorisation at the edge: every API request is SigV4-verified (gateway/sigv4.py) against
an access key (kambda/accesskeys.py) and authorised by that key's IAM-style policies (kambda/policies.py) for the
request's action and resource (gateway/authz.py). One middleware; refusals are `errors.AWSError`s, rendered by
the app's error middleware like any other.

Modes: `keys` verifies every request; `none` is the local backend's anonymous development mode, which the gateway
announces at start. The body is hashed here for requests the gateway reads whole (≤ its payload limit); a code
upload, streamed to disk, must declare its hash in x-amz-content-sha256 (or UNSIGNED-PAYLOAD), and the store
refuses a package whose bytes are not the declared ones (`payload_must_match`) before keeping it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from aiohttp import web

from kambda import accesskeys, policies

from . import authz, errors, sigv4
from .connections import RAW_BODY, read_raw_body
from .control import operations

MODES = ("auto", "keys", "none")
GRANTS = "kambda.grants"  # the request's key's policies, for handlers that check a second action
IDENTITY = "kambda.sigv4-identity"  # where a streamed request keeps its Identity for `payload_must_match`
STREAMED = frozenset({("PUT", "/kambda/v1/code")})  # bodies not read whole: their hash is declared and checked later
Clock = Callable[[], datetime]


class KeySource(Protocol):
    def get(self, access_key_id: str) -> accesskeys.AccessKey | None: ...


class Authenticator:
    def __init__(
        self, keys: KeySource, *, region: str, account: str, max_body: int, body_timeout: float,
        clock: Clock | None = None,
    ) -> None:  # fmt: skip
        self._keys = keys
        self._region = region
        self._account = account
        self._max_body = max_body
        self._body_timeout = body_timeout
        self._clock = clock or (lambda: datetime.now(UTC))
        self._parsed: dict[str, tuple[accesskeys.AccessKey, list[policies.Policy]]] = {}  # key id -> (key, policies)

    def _policies(self, key: accesskeys.AccessKey) -> list[policies.Policy]:
        """The key's policies, parsed once per version of the key (a changed key file makes new key objects)."""
        cached = self._parsed.get(key.access_key_id)
        if cached is None or cached[0] is not key:
            cached = self._parsed[key.access_key_id] = (key, [policies.parse(doc) for doc in key.policies])
        return cached[1]

    async def check(self, request: web.Request) -> None:
        """Refuse the request unless it is signed by a known key whose policies allow what it asks."""
        if authz.is_open(request.method, request.path):
            return
        streamed = (request.method, request.path) in STREAMED
        body_sha256 = None
        if not streamed:
            # The bytes as sent (signed), not decoded; aiohttp keeps them for the handler. Same limit, deadline and
            # errors as the handlers' own reads.
            control = operations.body_limit(request.method, request.path)
            if control is None:  # an invoke (or one of kambda's own small bodies)
                limit, timeout = self._max_body, self._body_timeout
                too_large = f"Request must be smaller than {limit} bytes for the InvokeFunction operation"
            else:
                limit, timeout = control, operations.body_timeout(self._body_timeout, control)
                too_large = f"Request must be smaller than {limit} bytes"
            raw = await read_raw_body(request, limit=limit, timeout=timeout, too_large=too_large)
            body_sha256 = hashlib.sha256(raw).hexdigest()
        path, query = sigv4.split_target(request.raw_path)
        key: list[accesskeys.AccessKey] = []

        def secret_for(access_key_id: str, session_token: str | None) -> str | None:
            found = self._keys.get(access_key_id)
            if found is None or session_token is not None:  # no temporary credentials are issued
                return None
            key.append(found)
            return found.secret_access_key

        try:
            identity = sigv4.verify(
                request.method, path, query, list(request.headers.items()), body_sha256,
                region=self._region, now=self._clock(), secret_for=secret_for,
            )  # fmt: skip
        except sigv4.BodyHashRequired:
            raise sigv4.InvalidSignatureException(
                "A streamed body must declare its SHA-256 in x-amz-content-sha256 (or UNSIGNED-PAYLOAD)"
            ) from None
        if streamed:
            request[IDENTITY] = identity
        asked = authz.of_request(
            request.method, request.path, dict(request.query), self._region, self._account,
            body=request.get(RAW_BODY),
        )  # fmt: skip
        if asked is None:
            return  # no API serves it: the router answers (404), nothing is done
        principal = f"arn:aws:iam::{self._account}:user/{key[0].name or key[0].access_key_id}"
        grants = request[GRANTS] = Grants(principal, self._policies(key[0]))
        grants.require(asked.action, asked.resource)


@dataclass(frozen=True)
class Grants:
    """What the request's key may do, for the handlers whose answer depends on a second action (GetFunction's
    tags need lambda:ListTags; CreateFunction with tags needs lambda:TagResource, as on AWS)."""

    principal: str
    policies: list[policies.Policy]

    def permits(self, action: str, resource: str) -> bool:
        return policies.evaluate(self.policies, action=action, resource=resource).outcome is policies.Outcome.ALLOWED

    def require(self, action: str, resource: str) -> None:
        decision = policies.evaluate(self.policies, action=action, resource=resource)
        if decision.outcome is not policies.Outcome.ALLOWED:
            message = policies.access_denied_message(self.principal, decision)
            raise errors.AWSError(policies.ACCESS_DENIED_STATUS, policies.ACCESS_DENIED, message)


def permits(request: web.Request, action: str, resource: str) -> bool:
    """Whether the request's key may also do `action` on `resource` (an anonymous gateway permits everything)."""
    grants = request.get(GRANTS)
    return not isinstance(grants, Grants) or grants.permits(action, resource)


def require(request: web.Request, action: str, resource: str) -> None:
    grants = request.get(GRANTS)
    if isinstance(grants, Grants):
        grants.require(action, resource)


def payload_must_match(request: web.Request, body_sha256: str) -> None:
    """For a streamed body: refuse it unless it hashes to what its signature covered."""
    identity = request.get(IDENTITY)
    if isinstance(identity, sigv4.Identity):
        sigv4.check_payload(identity, body_sha256)


def middleware(authenticator: Authenticator) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def authenticate(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        await authenticator.check(request)
        return await handler(request)

    return authenticate
