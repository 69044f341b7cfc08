"""AWS-shaped error responses, as botocore parses them (x-amzn-ErrorType header first, then the body)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web

# Service errors carry "Type":"Service" and a capitalised "Message"; user errors lower-case "message" except
# ResourceNotFoundException, whose captured AWS bodies use "Message". botocore reads either spelling.
_CAPITAL_MESSAGE = {"ResourceNotFoundException", "ServiceException"}


def aws_error(
    status: int, error_type: str, message: str, *, request_id: str | None = None, **extra: Any
) -> web.Response:
    body: dict[str, Any] = {"Type": "Service" if status >= 500 else "User"}
    body["Message" if error_type in _CAPITAL_MESSAGE else "message"] = message
    body.update(extra)
    headers = {"x-amzn-ErrorType": error_type, "x-amzn-RequestId": request_id or str(uuid.uuid4())}
    return web.Response(status=status, body=json.dumps(body).encode(), headers=headers, content_type="application/json")


def not_found(arn: str) -> web.Response:
    return aws_error(404, "ResourceNotFoundException", f"Function not found: {arn}")


def invalid_parameter(message: str) -> web.Response:
    return aws_error(400, "InvalidParameterValueException", message)


def invalid_content(message: str) -> web.Response:
    return aws_error(400, "InvalidRequestContentException", message)


def throttled(reason: str) -> web.Response:
    return aws_error(429, "TooManyRequestsException", "Rate Exceeded.", Reason=reason)


def too_large(message: str) -> web.Response:
    return aws_error(413, "RequestEntityTooLargeException", message)


def service_error(message: str) -> web.Response:
    return aws_error(500, "ServiceException", message)
