"""AWS Signature Version 4 verification, for requests signed as the SDKs sign Lambda's REST API.

A pure function of the request: `verify(method, path, query, headers, body_sha256, region=…, now=…, secret_for=…)`
returns an `Identity` or raises one of the typed refusals below, each an `errors.AWSError` carrying Lambda's error
code, status and message, so the app's middleware renders it like any other refusal. Nothing here reads a clock, a
socket or the environment: the time is `now`, the secret comes from the injected `secret_for`, and the body's hash
from the caller, who reads (and hashes) the body as it streams in.

What "as the SDKs sign" means, from botocore's `SigV4Auth` (the AWS CLI and boto3) and AWS's signing test suite, both
run by tests/unit/test_sigv4.py, and the JS SDK v3's `SignatureV4` (smithy-typescript's signature-v4, read):
- The canonical URI is the path *as sent* (still percent-encoded), dot segments and empty segments removed, then
  percent-encoded again (`%3A` becomes `%253A`). Callers must pass the request-target's path untouched: aiohttp's
  `request.raw_path` split at `?` (`split_target`), never `request.path` or `rel_url.raw_path`, which yarl has
  decoded or re-quoted.
- The canonical query is every `key=value` pair decoded and re-encoded (unreserved characters bare, everything else
  `%XX`), sorted by key, then value. A literal `+` decodes to a space, as yarl reads it for `request.query`, so the
  value verified is the value the gateway acts on (no SDK sends a literal `+`; they send `%2B` or `%20`).
- Canonical headers are the SignedHeaders' values, trimmed, inner whitespace collapsed, repeated headers
  comma-joined in arrival order.
- The payload hash is `x-amz-content-sha256` when the request sends it (then the body must hash to it, unless it is
  `UNSIGNED-PAYLOAD`), else the body's SHA-256.

Stricter than AWS where being lenient buys nothing: every `x-amz-*` header the request carries must be signed (the
SDKs sign them all; Lambda's `X-Amz-Invocation-Type` and `X-Amz-Client-Context` change what an invocation does), the
Authorization header has each of its three components exactly once and nothing else, SignedHeaders is sorted,
lower-case and unique, and a presigned URL lives no longer than the 5-minute window (shorter if its X-Amz-Expires
says so; STS, also a non-S3 service, ignores longer ones too). Only `X-Amz-Date` dates a request; a `Date` header
alone is refused.

Error codes and messages are Lambda's as its clients have reported them (status 403 throughout; sources in each
class's docstring). Refusals AWS has no known wording for (this module's stricter checks) are marked `# ours`.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import ClassVar
from urllib.parse import quote, unquote_to_bytes

from . import errors

SERVICE = "lambda"
ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_SKEW = timedelta(minutes=5)
MAX_EXPIRES = 604800  # seven days: the longest X-Amz-Expires AWS accepts anywhere
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"

# Bounds on what is parsed, well above what any SDK sends (a botocore Authorization for Lambda is ~250 characters),
# so a hostile header costs a bounded amount of work before it is refused.
MAX_AUTHORIZATION = 4096
MAX_CREDENTIAL = 256
MAX_SIGNED_HEADERS = 64
MAX_SESSION_TOKEN = 8192

SecretLookup = Callable[[str, str | None], str | None]
Headers = Mapping[str, str] | Iterable[tuple[str, str]]

_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_AMZ_DATE = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_EXPIRES = re.compile(r"[0-9]{1,6}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110): methods and header names
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")  # ...lower-cased, as SignedHeaders must list them
_AUTH_SEPARATORS = re.compile(r"[,\s]+")

# The presigned-URL parameters (query-string authentication); X-Amz-Signature is the one left out of what is signed.
_Q_ALGORITHM = "X-Amz-Algorithm"
_Q_CREDENTIAL = "X-Amz-Credential"
_Q_DATE = "X-Amz-Date"
_Q_EXPIRES = "X-Amz-Expires"
_Q_SIGNED_HEADERS = "X-Amz-SignedHeaders"
_Q_SIGNATURE = "X-Amz-Signature"
_Q_TOKEN = "X-Amz-Security-Token"
_QUERY_REQUIRED = (_Q_ALGORITHM, _Q_CREDENTIAL, _Q_SIGNATURE, _Q_SIGNED_HEADERS, _Q_DATE)  # AWS's order
_QUERY_AUTH = frozenset((*_QUERY_REQUIRED, _Q_EXPIRES, _Q_TOKEN))


# --- refusals --------------------------------------------------------------------------------------------------


class SignatureError(errors.AWSError):
    """A refused signature: Lambda's error code and HTTP status are the class's, the message the instance's."""

    CODE: ClassVar[str] = ""
    STATUS: ClassVar[int] = 403

    def __init__(self, message: str) -> None:
        super().__init__(self.STATUS, self.CODE, message)


class MissingAuthenticationTokenException(SignatureError):
    """No Authorization header and no X-Amz-Algorithm parameter: Lambda answers 403 "Missing Authentication Token"
    (github.com/brefphp/bref/issues/1250, an Invoke of lambda.us-east-1.amazonaws.com)."""

    CODE = "MissingAuthenticationTokenException"


class IncompleteSignatureException(SignatureError):
    """An Authorization header or presigned query that cannot be parsed: a component or parameter missing, a
    malformed date, credential or algorithm. Wording as AWS's JSON services answer (live DynamoDB and Kinesis
    answers recorded in mhart/dynalite and mhart/kinesalite; API Gateway's, github.com/aws/chalice/issues/828). No
    Lambda capture was found: the status is 403 like Lambda's other authentication errors (DynamoDB and Kinesis
    answer all of these 400, API Gateway and Lambda 403)."""

    CODE = "IncompleteSignatureException"


class InvalidSignatureException(SignatureError):
    """A signature that does not verify, a timestamp outside the window, or a credential scoped elsewhere. Lambda:
    403 with "Signature expired: … (… - 5 min.)" (github.com/aws/aws-sdk-go/issues/859, ListFunctions) and the
    plain mismatch message, 192 bytes of JSON, no canonical request appended (github.com/erlcloud/erlcloud/
    issues/690, Invoke)."""

    CODE = "InvalidSignatureException"


class UnrecognizedClientException(SignatureError):
    """An access key (or session token) the gateway does not know: Lambda answers 403 "The security token included
    in the request is invalid." (github.com/iann0036/iamlive/issues/58, DeleteFunction)."""

    CODE = "UnrecognizedClientException"


class BodyHashRequired(ValueError):
    """Not a refusal: `verify` was given no body hash for a request whose signature covers the body (it sends no
    x-amz-content-sha256). Hash the body and call again; a caller that never passes None never sees this."""


SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access "
    "Key and signing method. Consult the service documentation for details."
)
MISSING_TOKEN = "Missing Authentication Token"
INVALID_TOKEN = "The security token included in the request is invalid."


# --- results ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who signed the request. `payload_sha256` is what the body must still hash to (`check_payload`): set only when
    `verify` was given no body hash and the request declared one in x-amz-content-sha256."""

    access_key_id: str
    session_token: str | None = None
    payload_sha256: str | None = None


@dataclass(frozen=True)
class Authorization:
    """The parts of an `Authorization: AWS4-HMAC-SHA256 …` header (or of a presigned URL's parameters)."""

    algorithm: str
    credential: str
    signed_headers: str
    signature: str


# --- the verifier ----------------------------------------------------------------------------------------------


def verify(
    method: str,
    path: str,
    query: str,
    headers: Headers,
    body_sha256: str | None,
    *,
    region: str,
    now: datetime,
    secret_for: SecretLookup,
    service: str = SERVICE,
) -> Identity:
    """Verify a SigV4-signed request, by Authorization header or presigned query string.

    `path` and `query` are the request-target as received (`split_target(request.raw_path)`), `headers` every
    header, repeats included (aiohttp's `request.headers`, or (name, value) pairs), `body_sha256` the hex SHA-256 of
    the body, or None when it has not been read yet (then only a request declaring its hash in
    x-amz-content-sha256 can be verified, and the body is checked later with `check_payload`). `now` is the
    gateway's clock, naive meaning UTC. `secret_for(access_key_id, session_token)` returns the secret key, or None
    for a key (or token) it does not know. `service` is for AWS's test suite (signed for "service"); the gateway
    leaves it at "lambda".
    """
    by_name = _headers_by_name(headers)
    pairs = _query_pairs(query)
    presigned = any(key == _Q_ALGORITHM.encode() for key, _ in pairs)
    auth, amz_date, token, expires = _from_query(pairs, by_name) if presigned else _from_headers(by_name)
    if token is not None and len(token) > MAX_SESSION_TOKEN:  # ours
        raise IncompleteSignatureException(f"X-Amz-Security-Token is longer than {MAX_SESSION_TOKEN} characters.")

    when = parse_amz_date(amz_date)
    _check_time(amz_date, when, _utc(now), expires)
    signed = _signed_header_names(auth.signed_headers)
    _check_signed_headers(signed, by_name)
    if auth.algorithm != ALGORITHM:
        raise IncompleteSignatureException(
            f"Unsupported AWS 'algorithm': '{auth.algorithm}' (only {ALGORITHM} for now). "
        )
    access_key_id, scope = _check_scope(auth.credential, amz_date, region, service)
    if not _SIGNATURE.fullmatch(auth.signature):  # ours; compare_digest would also refuse (raise on) non-ASCII
        raise IncompleteSignatureException(
            f"Signature must be 64 lower-case hexadecimal characters, not '{auth.signature[:80]}'."
        )
    declared = _optional(by_name, "x-amz-content-sha256")
    payload_hash, pending = _payload(declared, body_sha256)

    secret = secret_for(access_key_id, token)
    if secret is None:
        raise UnrecognizedClientException(INVALID_TOKEN)
    canonical = _canonical_request(method, path, pairs, by_name, signed, payload_hash, presigned)
    expected = signature(signing_key(secret, amz_date[:8], region, service), string_to_sign(amz_date, scope, canonical))
    if not hmac.compare_digest(expected, auth.signature):
        raise InvalidSignatureException(SIGNATURE_MISMATCH)
    return Identity(access_key_id, token, pending)


def check_payload(identity: Identity, body_sha256: str) -> None:
    """After `verify(…, body_sha256=None)`: refuse a body that is not the one the request declared and signed."""
    if identity.payload_sha256 is not None and body_sha256 != identity.payload_sha256:
        raise InvalidSignatureException(SIGNATURE_MISMATCH)


def split_target(raw_target: str) -> tuple[str, str]:
    """A request-target as received (aiohttp's `request.raw_path`) as the (path, query) `verify` takes."""
    path, _, query = raw_target.partition("?")
    return path, query


# --- parsing ---------------------------------------------------------------------------------------------------


def parse_authorization(value: str) -> Authorization:
    """`AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`: each component once, nothing else.

    The algorithm is checked later (AWS reports a missing component before a wrong algorithm); components are
    separated by commas and/or whitespace, as AWS tokenises them.
    """
    if len(value) > MAX_AUTHORIZATION:  # ours
        raise IncompleteSignatureException(f"Authorization header is longer than {MAX_AUTHORIZATION} characters.")
    algorithm, _, rest = value.strip().partition(" ")
    parts: dict[str, str] = {}
    for token in _AUTH_SEPARATORS.split(rest):
        if not token:
            continue
        key, equals, part = token.partition("=")
        if not equals:
            raise IncompleteSignatureException(
                f"'{token}' not a valid key=value pair (missing equal-sign) in Authorization header: '{value}'."
            )
        if key not in ("Credential", "SignedHeaders", "Signature"):  # ours
            raise IncompleteSignatureException(f"'{key}' is not a parameter of the Authorization header.")
        if key in parts:  # ours
            raise IncompleteSignatureException(f"Authorization header has '{key}' more than once.")
        parts[key] = part
    missing = "".join(
        f"Authorization header requires '{key}' parameter. "
        for key in ("Credential", "Signature", "SignedHeaders")
        if not parts.get(key)
    )
    if missing:
        raise IncompleteSignatureException(f"{missing}Authorization={value}")
    return Authorization(algorithm, parts["Credential"], parts["SignedHeaders"], parts["Signature"])


def parse_amz_date(value: str) -> datetime:
    """X-Amz-Date, `%Y%m%dT%H%M%SZ` exactly (strptime would take one-digit months and days)."""
    if _AMZ_DATE.fullmatch(value):
        try:
            return datetime(
                int(value[0:4]), int(value[4:6]), int(value[6:8]),
                int(value[9:11]), int(value[11:13]), int(value[13:15]), tzinfo=UTC,
            )  # fmt: skip
        except ValueError:
            pass
    raise IncompleteSignatureException(
        f"Date must be in ISO-8601 'basic format'. Got '{value}'. See http://en.wikipedia.org/wiki/ISO_8601"
    )


def _from_headers(by_name: Mapping[str, Sequence[str]]) -> tuple[Authorization, str, str | None, None]:
    """An Authorization header's (authorization, X-Amz-Date, session token, no expiry)."""
    if "authorization" not in by_name:
        raise MissingAuthenticationTokenException(MISSING_TOKEN)
    value = _single(by_name, "authorization")
    auth = parse_authorization(value)
    amz_date = _optional(by_name, "x-amz-date")
    if amz_date is None and "date" in by_name:  # ours
        raise IncompleteSignatureException(
            "Authorization header requires existence of a 'X-Amz-Date' header; a 'Date' header alone is not "
            f"accepted here. Authorization={value}"
        )
    if amz_date is None:
        raise IncompleteSignatureException(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. "
            f"Authorization={value}"
        )
    return auth, amz_date, _optional(by_name, "x-amz-security-token"), None


def _from_query(
    pairs: Sequence[tuple[bytes, bytes]], by_name: Mapping[str, Sequence[str]]
) -> tuple[Authorization, str, str | None, int | None]:
    """A presigned URL's (authorization, X-Amz-Date, session token, X-Amz-Expires)."""
    if "authorization" in by_name:
        raise InvalidSignatureException(
            "Found both 'X-Amz-Algorithm' as a query-string param and 'Authorization' as HTTP header."
        )
    found: dict[str, str] = {}
    for raw_key, raw_value in pairs:
        key = _text(raw_key)
        if key in _QUERY_AUTH:
            if key in found:  # ours
                raise IncompleteSignatureException(f"AWS query-string parameter '{key}' appears more than once.")
            found[key] = _text(raw_value)
    missing = "".join(
        f"AWS query-string parameters must include '{key}'. " for key in _QUERY_REQUIRED if not found.get(key)
    )
    if missing:
        raise IncompleteSignatureException(f"{missing}Re-examine the query-string parameters.")
    expires = None
    if _Q_EXPIRES in found:
        raw = found[_Q_EXPIRES]
        if not _EXPIRES.fullmatch(raw) or not 1 <= int(raw) <= MAX_EXPIRES:  # ours
            raise IncompleteSignatureException(
                f"X-Amz-Expires must be a whole number of seconds from 1 to {MAX_EXPIRES}, not '{raw}'."
            )
        expires = int(raw)
    auth = Authorization(found[_Q_ALGORITHM], found[_Q_CREDENTIAL], found[_Q_SIGNED_HEADERS], found[_Q_SIGNATURE])
    return auth, found[_Q_DATE], found.get(_Q_TOKEN), expires


def _signed_header_names(value: str) -> tuple[str, ...]:
    names = tuple(value.split(";"))
    if len(names) > MAX_SIGNED_HEADERS:  # ours
        raise IncompleteSignatureException(f"SignedHeaders lists more than {MAX_SIGNED_HEADERS} headers.")
    if not all(_HEADER_NAME.fullmatch(name) for name in names) or list(names) != sorted(set(names)):  # ours
        raise IncompleteSignatureException(
            f"SignedHeaders must be lower-case header names, sorted, each once, separated by ';', not '{value}'."
        )
    return names


# --- checks ----------------------------------------------------------------------------------------------------


def _check_time(amz_date: str, when: datetime, now: datetime, expires: int | None) -> None:
    """Within 5 minutes of the gateway's clock either way, and for a presigned URL also within its X-Amz-Expires.

    Differences, never sums, so that a date in year 9999 cannot overflow."""
    now = now.replace(microsecond=0)
    window = MAX_SKEW if expires is None else min(MAX_SKEW, timedelta(seconds=expires))
    if now - when > window:
        span = "5 min." if window == MAX_SKEW else f"{expires} sec."
        raise InvalidSignatureException(
            f"Signature expired: {amz_date} is now earlier than {_stamp(now - window)} ({_stamp(now)} - {span})"
        )
    if when - now > MAX_SKEW:
        raise InvalidSignatureException(
            f"Signature not yet current: {amz_date} is still later than {_stamp(now + MAX_SKEW)} "
            f"({_stamp(now)} + 5 min.)"
        )


def _check_signed_headers(signed: Sequence[str], by_name: Mapping[str, Sequence[str]]) -> None:
    if "host" not in signed:
        raise InvalidSignatureException("'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")
    unsigned = sorted(name for name in by_name if name.startswith("x-amz-") and name not in signed)  # ours
    if unsigned:
        raise InvalidSignatureException(
            f"There were headers present in the request which were not signed: {', '.join(unsigned)}."
        )


def _check_scope(credential: str, amz_date: str, region: str, service: str) -> tuple[str, str]:
    """`keyid/date/region/service/aws4_request`: returns (access key id, scope); every wrong part is named at once,
    in AWS's order and wording (each sentence but the last ends with a space)."""
    parts = credential.split("/")
    if len(credential) > MAX_CREDENTIAL or len(parts) != 5:
        raise IncompleteSignatureException(
            "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, "
            f"got '{credential[:MAX_CREDENTIAL]}'"
        )
    access_key_id, date, scope_region, scope_service, terminator = parts
    problems: list[str] = []
    if scope_region != region:
        problems.append(f"Credential should be scoped to a valid region, not '{scope_region}'. ")
    if scope_service != service:
        problems.append(f"Credential should be scoped to correct service: '{service}'. ")
    if terminator != TERMINATOR:
        problems.append(f"Credential should be scoped with a valid terminator: '{TERMINATOR}', not '{terminator}'. ")
    if date != amz_date[:8]:
        problems.append(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{date}' != '{amz_date[:8]}', from '{amz_date}'."
        )
    if problems:
        raise InvalidSignatureException("".join(problems))
    return access_key_id, "/".join(parts[1:])


def _payload(declared: str | None, body_sha256: str | None) -> tuple[str, str | None]:
    """(the canonical request's payload hash, the hash the body must still have, if it cannot be checked yet)."""
    if declared is None:
        if body_sha256 is None:
            raise BodyHashRequired("the request signs its body: pass the body's SHA-256")
        return body_sha256, None
    if declared == UNSIGNED_PAYLOAD:
        return declared, None
    # A hash, never a STREAMING-* chunked-signing marker: Lambda's SDK calls send none, and a body this gateway
    # reads whole could not be checked chunk by chunk anyway.
    if not _SIGNATURE.fullmatch(declared) or (body_sha256 is not None and body_sha256 != declared):
        raise InvalidSignatureException(SIGNATURE_MISMATCH)
    return declared, declared if body_sha256 is None else None


# --- canonical request, string to sign, key ----------------------------------------------------------------------


def canonical_request(
    method: str,
    path: str,
    query: str,
    headers: Headers,
    signed_headers: Sequence[str],
    payload_hash: str,
    *,
    presigned: bool = False,
) -> str:
    """The canonical request AWS defines, for exactly `signed_headers` (lower-case, sorted), from the request as
    received; a presigned request leaves its X-Amz-Signature out."""
    return _canonical_request(
        method, path, _query_pairs(query), _headers_by_name(headers), signed_headers, payload_hash, presigned
    )


def _canonical_request(
    method: str,
    path: str,
    pairs: Sequence[tuple[bytes, bytes]],
    by_name: Mapping[str, Sequence[str]],
    signed_headers: Sequence[str],
    payload_hash: str,
    presigned: bool,
) -> str:
    if not _TOKEN.fullmatch(method):  # a line break in it would make two requests' canonical forms one
        raise InvalidSignatureException(SIGNATURE_MISMATCH)
    lines = [f"{name}:{','.join(_trimmed(value) for value in by_name.get(name, ()))}" for name in signed_headers]
    return "\n".join(
        (
            method,
            canonical_uri(path),
            canonical_query(pairs, presigned=presigned),
            *lines,
            "",
            ";".join(signed_headers),
            payload_hash,
        )
    )


def canonical_uri(path: str) -> str:
    """The path as sent, normalised (dot and empty segments removed, as botocore and the JS SDK do for every service
    but S3) and percent-encoded once more."""
    return quote(_bytes(_remove_dot_segments(path)), safe="/~")


def canonical_query(pairs: Sequence[tuple[bytes, bytes]], *, presigned: bool = False) -> str:
    """Sorted by encoded key, then value, as AWS defines it and botocore does. (The JS SDK sorts decoded keys: the
    same order for the ASCII names Lambda's API uses.)"""
    encoded = sorted(
        (quote(key, safe="-_.~"), quote(value, safe="-_.~"))
        for key, value in pairs
        if not (presigned and key == _Q_SIGNATURE.encode())
    )
    return "&".join(f"{key}={value}" for key, value in encoded)


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    digest = hashlib.sha256(_bytes(canonical)).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


@functools.lru_cache(maxsize=256)
def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """kSigning, cached: a key changes once a day, and the warm invoke path would otherwise spend four of its five
    HMACs here. Bounded, and never grown by strangers: it is reached only for a known key and a date within five
    minutes of now, so entries are (keys in use) x (at most two dates)."""
    key = _hmac(f"AWS4{secret}".encode(), date)
    for part in (region, service, TERMINATOR):
        key = _hmac(key, part)
    return key


def signature(key: bytes, to_sign: str) -> str:
    return hmac.new(key, _bytes(to_sign), hashlib.sha256).hexdigest()


# --- helpers ---------------------------------------------------------------------------------------------------


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, _bytes(message), hashlib.sha256).digest()


def _bytes(text: str) -> bytes:
    """UTF-8, with aiohttp's surrogate-escaped undecodable bytes restored; text no client could have sent (a lone
    surrogate) cannot have been signed."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise InvalidSignatureException(SIGNATURE_MISMATCH) from None


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _query_pairs(query: str) -> list[tuple[bytes, bytes]]:
    """Decoded (key, value) pairs in order; empty pieces (`a=1&&b=2`) are skipped, as yarl skips them."""
    pairs = []
    for piece in _bytes(query).split(b"&"):
        if piece:
            key, _, value = piece.partition(b"=")
            pairs.append((unquote_to_bytes(key.replace(b"+", b" ")), unquote_to_bytes(value.replace(b"+", b" "))))
    return pairs


def _headers_by_name(headers: Headers) -> dict[str, list[str]]:
    """Lower-cased names to their values in arrival order (a Mapping's `items()` repeats them: aiohttp's does)."""
    by_name: dict[str, list[str]] = {}
    for name, value in headers.items() if isinstance(headers, Mapping) else headers:
        by_name.setdefault(name.lower(), []).append(value)
    return by_name


def _single(by_name: Mapping[str, Sequence[str]], name: str) -> str:
    values = by_name[name]
    if len(values) != 1:  # ours
        raise IncompleteSignatureException(f"Found more than one '{name}' header.")
    return values[0]


def _optional(by_name: Mapping[str, Sequence[str]], name: str) -> str | None:
    return _single(by_name, name) if name in by_name else None


def _trimmed(value: str) -> str:
    """Trimall: outer whitespace removed, inner runs made one space (a folded header's line breaks included), as
    botocore does it."""
    return " ".join(value.split())


def _remove_dot_segments(path: str) -> str:
    if not path:
        return "/"
    kept: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if kept:
                kept.pop()
        elif segment not in ("", "."):
            kept.append(segment)
    leading = "/" if path.startswith("/") else ""
    trailing = "/" if path.endswith("/") and kept else ""
    return leading + "/".join(kept) + trailing


def _utc(now: datetime) -> datetime:
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def _stamp(moment: datetime) -> str:
    return moment.strftime(AMZ_DATE_FORMAT)
