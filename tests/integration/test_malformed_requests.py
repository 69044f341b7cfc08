"""Bad requests get the right 4xx in the AWS error shape, and the gateway keeps serving."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import socket
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import Gateway

PATH = "/2015-03-31/functions/{}/invocations"
CONFIG = "/2019-09-25/functions/{}/event-invoke-config"
DEEP = b"[" * 978 + b"]" * 978  # where CPython's json raised RecursionError (a 500) from inside the handler
VERY_DEEP = b"[" * 100_000 + b"]" * 100_000


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


def _client_context(raw: bytes) -> dict[str, str]:
    return {"X-Amz-Client-Context": base64.b64encode(raw).decode()}


def _invalid_content(body: bytes, headers: dict[str, str] | None = None, *, id: str) -> object:
    return pytest.param("POST", PATH.format("echo"), body, headers or {}, 400, "InvalidRequestContentException", id=id)


def _invalid_parameter(method: str, path: str, body: bytes = b"{}", *, id: str) -> object:
    return pytest.param(method, path, body, {}, 400, "InvalidParameterValueException", id=id)


# Inputs that once got a 5xx, or reached a function they should not have (found by fuzzing and attacks).
REGRESSIONS = [
    _invalid_content(DEEP, id="deep-json-978"),
    _invalid_content(VERY_DEEP, id="deep-json-100k"),
    _invalid_content(b"[" * 513 + b"]" * 513, id="deep-json-past-the-limit"),
    _invalid_content(b"{}", _client_context(b'{"a":' + b"[" * 1300 + b"]" * 1300 + b"}"), id="deep-client-context"),
    _invalid_parameter("PUT", CONFIG.format("echo"), DEEP, id="deep-config-put"),
    _invalid_parameter(
        "POST", CONFIG.format("echo"), b'{"MaximumRetryAttempts": ' + DEEP + b"}", id="deep-config-post"
    ),
    _invalid_parameter("PUT", CONFIG.format("echo"), b'{"MaximumRetryAttempts": NaN}', id="config-nan"),
    _invalid_content(b'{"not": "gzip"}', {"Content-Encoding": "gzip"}, id="gzip-header-plain-body"),
    _invalid_content(gzip.compress(b'{"a": 1}')[:-8], {"Content-Encoding": "gzip"}, id="gzip-truncated"),
    _invalid_content(b"\x00\x01garbage", {"Content-Encoding": "deflate"}, id="deflate-garbage"),
    pytest.param(
        "POST", PATH.format("echo"), b"{}", {"Content-Encoding": "br"}, 415, "UnsupportedMediaTypeException", id="br"
    ),
    pytest.param(
        "POST",
        PATH.format("echo"),
        b"{}",
        {"Content-Encoding": "zstd"},
        415,
        "UnsupportedMediaTypeException",
        id="zstd",
    ),
    pytest.param(
        "POST",
        PATH.format("echo"),
        b"{}",
        {"Content-Encoding": "x-unknown"},
        415,
        "UnsupportedMediaTypeException",
        id="unknown-encoding",
    ),
    pytest.param(
        "PUT",
        CONFIG.format("echo"),
        b"{}",
        {"Content-Encoding": "br"},
        415,
        "UnsupportedMediaTypeException",
        id="config-unknown-encoding",
    ),
    _invalid_parameter("POST", PATH.format("echo%0A"), id="name-newline"),
    _invalid_parameter("POST", PATH.format("echo%00"), id="name-nul"),
    _invalid_parameter("POST", PATH.format("echo:$LATEST%0A"), id="name-qualifier-newline"),
    _invalid_parameter("POST", PATH.format("echo") + "?Qualifier=$LATEST%0A", id="qualifier-newline"),
    _invalid_parameter("POST", PATH.format("echo") + "?Qualifier=%00", id="qualifier-nul"),
    _invalid_parameter("GET", CONFIG.format("echo%0A"), b"", id="config-name-newline"),
    _invalid_parameter("PUT", CONFIG.format("echo%0A"), id="config-put-name-newline"),
    _invalid_parameter("DELETE", CONFIG.format("echo%00"), b"", id="config-delete-name-nul"),
    _invalid_content(b"NaN", id="nan"),
    _invalid_content(b'{"a": Infinity}', id="infinity"),
    _invalid_content(b"[-Infinity]", id="minus-infinity"),
    _invalid_content('{"a": "b"}'.encode("utf-16"), id="utf16-bom"),
    _invalid_content('{"a": "b"}'.encode("utf-16-le"), id="utf16le"),
    _invalid_content('{"a": "b"}'.encode("utf-16-be"), id="utf16be"),
    _invalid_content('{"a": "b"}'.encode("utf-32"), id="utf32-bom"),
    _invalid_content('{"a": "b"}'.encode("utf-32-le"), id="utf32le"),
    _invalid_content('{"a": "b"}'.encode("utf-32-be"), id="utf32be"),
    _invalid_content('{"a": "b"}'.encode("utf-8-sig"), id="utf8-bom"),
    _invalid_content(b"{}", _client_context('{"a": "b"}'.encode("utf-16")), id="client-context-utf16"),
    _invalid_content(b"{}", _client_context(b'{"a": NaN}'), id="client-context-nan"),
]


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "error_type"), MATRIX + REGRESSIONS)
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


def _gzip_bomb(decompressed_gib: int) -> bytes:
    """Zeros, gzip-compressed about 1000:1 in blocks that repeat byte for byte (built in milliseconds). There is
    no trailer: a gateway that inflated all of it would find out only at the end, with the memory already spent."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\0" * (1 << 20)
    first = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    return first + repeated * (decompressed_gib * 1024 - 1)


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_gzip_bomb_is_refused_without_inflating_it(gateway: Gateway) -> None:
    bomb = _gzip_bomb(4)  # 4 GiB of zeros in ~4 MiB, under the 6 MiB payload limit
    assert len(bomb) < 6 * 1024 * 1024
    before = _peak_rss_kib(gateway.proc.pid)
    for path in (PATH.format("echo"), CONFIG.format("echo")):
        status, headers, body = request(gateway, "POST", path, bomb, {"Content-Encoding": "gzip"})
        assert_aws_error(status, headers, body, 413, "RequestEntityTooLargeException")
    # The body itself (4 MiB) and at most the limit's worth of output were held, never gigabytes.
    assert _peak_rss_kib(gateway.proc.pid) - before < 64 * 1024
    status, _, body = request(gateway, "POST", PATH.format("echo"), b'{"after":"bomb"}')
    assert status == 200 and json.loads(body) == {"after": "bomb"}


@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "deflate"])
def test_compressed_payloads_are_decoded(gateway: Gateway, coding: str) -> None:
    payload = {"compressed": coding, "padding": "x" * 10_000}
    raw = json.dumps(payload).encode()
    body = zlib.compress(raw) if coding == "deflate" else gzip.compress(raw)
    status, _, answer = request(gateway, "POST", PATH.format("echo"), body, {"Content-Encoding": coding})
    assert status == 200 and json.loads(answer) == payload


def test_nesting_up_to_the_limit_is_invoked(gateway: Gateway) -> None:
    payload = b"[" * 512 + b"]" * 512
    status, _, answer = request(gateway, "POST", PATH.format("echo"), payload)
    assert status == 200 and answer.replace(b" ", b"") == payload


def gateway_tracebacks(log: str) -> list[str]:
    """The gateway's own tracebacks (a function's output is prefixed `[name:version]` and may hold its own).

    Lines end at "\n" only: awslambdaric writes a handler's traceback as one line with "\r" between its parts."""
    return [line for line in log.split("\n") if line.startswith("Traceback")]


def test_no_traceback_for_any_of_it(gateway: Gateway) -> None:
    # Each refusal above is an expected answer, not an internal error: none left a traceback in the gateway's log.
    assert gateway_tracebacks(gateway.logs()) == []


def test_a_flood_of_malformed_requests_is_a_few_log_lines(gateway: Gateway) -> None:
    # Each of these made aiohttp log a traceback; now each is an INFO line, and one template is let through at most
    # 10 times a minute (the test may straddle two minutes).
    before = gateway.logs().count("Error handling request")
    for _ in range(300):
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nBad Header: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.0 400 Bad Request")  # aiohttp, before parsing a version
    status, _, body = request(gateway, "POST", PATH.format("echo"), b'{"after":"flood"}')
    assert status == 200 and json.loads(body) == {"after": "flood"}
    logged = gateway.logs().count("Error handling request") - before
    assert 1 <= logged <= 20, logged
    assert gateway_tracebacks(gateway.logs()) == []
