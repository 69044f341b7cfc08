"""Bad requests get the right 4xx in the AWS error shape, and the gateway keeps serving."""

from __future__ import annotations

import base64
import http.client
import json
import socket
from urllib.parse import urlsplit

import pytest

from tests.conftest import Gateway

PATH = "/2015-03-31/functions/{}/invocations"


def request(gateway: Gateway, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def assert_aws_error(status: int, headers: dict[str, str], body: bytes, expected_status: int, error_type: str) -> None:
    assert status == expected_status, body
    assert headers.get("x-amzn-ErrorType") == error_type
    assert headers.get("x-amzn-RequestId")
    parsed = json.loads(body)
    assert parsed["Type"] == "User"
    assert parsed.get("message") or parsed.get("Message")


MATRIX = [
    pytest.param("POST", PATH.format("echo"), b"{not json", {}, 400, "InvalidRequestContentException", id="bad-json"),
    pytest.param("POST", PATH.format("echo"), b"\xff\xfe", {}, 400, "InvalidRequestContentException", id="not-utf8"),
    pytest.param(
        "POST",
        PATH.format("echo") + "?Qualifier=bad!qual",
        b"{}",
        {},
        400,
        "InvalidParameterValueException",
        id="bad-qualifier",
    ),
    pytest.param(
        "POST",
        PATH.format("echo:1") + "?Qualifier=2",
        b"{}",
        {},
        400,
        "InvalidParameterValueException",
        id="conflicting-qualifier",
    ),
    pytest.param("POST", PATH.format("bad%21name"), b"{}", {}, 400, "InvalidParameterValueException", id="bad-name"),
    pytest.param("POST", PATH.format("x" * 65), b"{}", {}, 400, "InvalidParameterValueException", id="name-too-long"),
    pytest.param("GET", PATH.format("echo"), b"", {}, 405, "UnknownOperationException", id="wrong-method"),
    pytest.param("PUT", PATH.format("echo"), b"{}", {}, 405, "UnknownOperationException", id="wrong-method-put"),
    pytest.param("POST", "/2015-03-31/nothing-here", b"{}", {}, 404, "UnknownOperationException", id="unknown-path"),
    pytest.param(
        "POST",
        PATH.format("echo"),
        b"{}",
        {"X-Amz-Invocation-Type": "Sometimes"},
        400,
        "InvalidParameterValueException",
        id="bad-invocation-type",
    ),
    pytest.param(
        "POST",
        PATH.format("echo"),
        b"{}",
        {"X-Amz-Log-Type": "Everything"},
        400,
        "InvalidParameterValueException",
        id="bad-log-type",
    ),
    pytest.param(
        "POST",
        PATH.format("echo"),
        b"{}",
        {"X-Amz-Client-Context": "%%%not-base64"},
        400,
        "InvalidRequestContentException",
        id="bad-client-context",
    ),
    pytest.param(
        "POST",
        PATH.format("echo"),
        b"{}",
        {"X-Amz-Client-Context": base64.b64encode(b"[1,2]").decode()},
        400,
        "InvalidRequestContentException",
        id="client-context-not-object",
    ),
    pytest.param(
        "POST",
        PATH.format("echo"),
        b"{}",
        {"X-Amz-Client-Context": base64.b64encode(b'{"a":"' + b"x" * 4000 + b'"}').decode()},
        400,
        "InvalidRequestContentException",
        id="client-context-too-big",
    ),
    pytest.param(
        "POST",
        PATH.format("echo"),
        b"x" * (6 * 1024 * 1024 + 1),
        {},
        413,
        "RequestEntityTooLargeException",
        id="oversized",
    ),
    pytest.param(
        "POST",
        PATH.format("echo"),
        b"{}",
        {"X-Huge": "h" * 40_000},
        431,
        "RequestHeaderFieldsTooLargeException",
        id="huge-headers",
    ),
    pytest.param("POST", PATH.format("nope"), b"{}", {}, 404, "ResourceNotFoundException", id="unknown-function"),
]


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "error_type"), MATRIX)
def test_malformed_request(
    gateway: Gateway, method: str, path: str, body: bytes, headers: dict[str, str], status: int, error_type: str
) -> None:
    assert_aws_error(*request(gateway, method, path, body, headers), status, error_type)
    # ...and the gateway keeps serving.
    ok_status, _, ok_body = request(gateway, "POST", PATH.format("echo"), b'{"after":"bad"}')
    assert ok_status == 200 and json.loads(ok_body) == {"after": "bad"}


def test_truncated_body(gateway: Gateway) -> None:
    target = urlsplit(gateway.url)
    with socket.create_connection((target.hostname, target.port), timeout=30) as sock:
        sock.sendall(
            f"POST {PATH.format('echo')} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n".encode() + b'{"cut'
        )
        sock.shutdown(socket.SHUT_WR)  # the client gives up mid-body
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    # Either a clean 400 in the AWS shape or a closed connection; never a 200, never a crashed gateway.
    if reply:
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), reply[:200]
        assert b"x-amzn-ErrorType: InvalidRequestContentException" in head
    status, _, body = request(gateway, "POST", PATH.format("echo"), b'{"after":"truncated"}')
    assert status == 200 and json.loads(body) == {"after": "truncated"}
    assert gateway.proc.poll() is None


def test_botocore_parses_our_errors(lambda_client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(lambda_client.exceptions.InvalidRequestContentException):
        lambda_client.invoke(FunctionName="echo", Payload=b"{nope")
