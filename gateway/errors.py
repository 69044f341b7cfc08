"""AWS-shaped errors, as botocore parses them (x-amzn-ErrorType header first, then the body).

Handlers raise `AWSError`; the `_aws_errors` middleware in `app.py` renders it, so there is one way to refuse a
request. `raw_response` renders the same error as bytes for the connection guard, which answers before (or instead
of) aiohttp's request handling.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web

# Service errors carry "Type":"Service" and a capitalised "Message"; user errors lower-case "message" except
# ResourceNotFoundException, whose captured AWS bodies use "Message". botocore reads either spelling.
_CAPITAL_MESSAGE = {"ResourceNotFoundException", "ServiceException"}


class AWSError(Exception):
    """A refusal: HTTP status, Lambda error type, message and extra body fields (e.g. a throttle's `Reason`).

    `close` asks for the connection to be closed after the answer (the request's body could not be read, so the
    connection is in an unknown state); `headers` are added to the response (e.g. `Allow`, `Retry-After`).
    """

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        close: bool = False,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers = dict(headers or {})
        self.close = close
        self.extra = extra

    def body(self) -> bytes:
        body: dict[str, Any] = {"Type": "Service" if self.status >= 500 else "User"}
        body["Message" if self.error_type in _CAPITAL_MESSAGE else "message"] = self.message
        body.update(self.extra)
        return json.dumps(body).encode()

    def response_headers(self, request_id: str | None = None) -> dict[str, str]:
        return {
            "x-amzn-ErrorType": self.error_type,
            "x-amzn-RequestId": request_id or str(uuid.uuid4()),
            **self.headers,
        }

    def response(self, request_id: str | None = None) -> web.Response:
        response = web.Response(
            status=self.status,
            body=self.body(),
            headers=self.response_headers(request_id),
            content_type="application/json",
        )
        if self.close:
            response.force_close()
        return response


def raw_response(error: AWSError) -> bytes:
    """The error as a complete HTTP/1.1 response that closes the connection, for writing straight to a socket."""
    body = error.body()
    try:
        reason = HTTPStatus(error.status).phrase
    except ValueError:
        reason = "Error"
    headers = {
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "Connection": "close",
        **error.response_headers(),
    }
    head = f"HTTP/1.1 {error.status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1") + b"\r\n" + body


def aws_error(
    status: int, error_type: str, message: str, *, request_id: str | None = None, **extra: Any
) -> web.Response:
    """A rendered error, for the few places that answer rather than raise (e.g. a route's fallback handler)."""
    return AWSError(status, error_type, message, **extra).response(request_id)


def not_found(arn: str) -> AWSError:
    return AWSError(404, "ResourceNotFoundException", f"Function not found: {arn}")


def resource_not_found(message: str) -> AWSError:
    return AWSError(404, "ResourceNotFoundException", message)


def invalid_parameter(message: str) -> AWSError:
    return AWSError(400, "InvalidParameterValueException", message)


def invalid_content(message: str, *, close: bool = False) -> AWSError:
    return AWSError(400, "InvalidRequestContentException", message, close=close)


def throttled(reason: str) -> AWSError:
    return AWSError(429, "TooManyRequestsException", "Rate Exceeded.", Reason=reason)


def too_large(message: str) -> AWSError:
    return AWSError(413, "RequestEntityTooLargeException", message)


def unsupported_media_type(message: str) -> AWSError:
    return AWSError(415, "UnsupportedMediaTypeException", message)


def request_timeout(message: str, *, close: bool = True) -> AWSError:
    return AWSError(408, "RequestTimeoutException", message, close=close)


def service_error(message: str) -> AWSError:
    return AWSError(500, "ServiceException", message)


def unavailable(message: str) -> AWSError:
    """Too many connections: come back in a second (Lambda's own 503 is a ServiceException too)."""
    return AWSError(503, "ServiceException", message, headers={"Retry-After": "1"}, close=True)
