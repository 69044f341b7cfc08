"""The agent's Runtime API server against hostile and malformed clients, in-process on a loopback port.

Every case is an input that once froze or bloated the shared agent (finding 1 of the hardening issue) or a rule of
RFC 9112 a parser must enforce. The host behind the server records what reached it: a malformed request must
reach nothing, and the server must go on serving a well-formed client afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import socket
import time
from collections.abc import AsyncIterator

import pytest

from kambda.runtime.agent import runtime_api
from kambda.runtime.rpc import runtime_pb2 as pb

REQUEST_ID = "req-1"
RESPONSE_PATH = f"/2018-06-01/runtime/invocation/{REQUEST_ID}/response"
ERROR_PATH = f"/2018-06-01/runtime/invocation/{REQUEST_ID}/error"


class RecordingHost:
    """The sandbox side of the Runtime API, reduced to a record of what the server handed it."""

    def __init__(self) -> None:
        self.responses: list[bytes] = []
        self.errors: list[bytes] = []
        self.too_large: list[tuple[int, bool]] = []
        self.work: asyncio.Queue[pb.Invocation] = asyncio.Queue()
        self.next_calls = 0
        self.cancelled_nexts = 0
        self.post_delay = 0.0  # how long posting a result takes (the sandbox writes it to the gateway)

    async def next_invocation(self) -> tuple[pb.Invocation, int]:
        self.next_calls += 1
        try:
            return await self.work.get(), int(time.time() * 1000) + 3000
        except asyncio.CancelledError:
            self.cancelled_nexts += 1
            raise

    async def post_response(self, request_id: str, body: bytes) -> None:
        if request_id != REQUEST_ID:
            raise runtime_api.UnknownRequest(request_id)
        await asyncio.sleep(self.post_delay)
        self.responses.append(body)

    async def post_error(self, request_id: str, body: bytes, error_type_header: str | None) -> None:
        self.errors.append(body)

    async def post_init_error(self, body: bytes, error_type_header: str | None) -> None:
        raise runtime_api.InvalidState("init already completed")

    async def payload_too_large(self, request_id: str, size: int, *, error: bool) -> None:
        self.too_large.append((size, error))


@pytest.fixture
async def server() -> AsyncIterator[tuple[runtime_api.RuntimeAPIServer, RecordingHost, int]]:
    host = RecordingHost()
    api = runtime_api.RuntimeAPIServer(host, limits=runtime_api.Limits(stall=0.5, read=1.5, idle=1.0))
    port = await api.start()
    yield api, host, port
    await api.close()


async def exchange(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server sends until it closes (or the timeout)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


async def assert_still_serves(port: int, host: RecordingHost) -> None:
    before = len(host.responses)
    raw = await exchange(
        port, f"POST {RESPONSE_PATH} HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode()
    )
    assert status_of(raw) == 202, raw
    assert host.responses[before:] == [b"ok"]


MALFORMED = [
    pytest.param(
        f"POST {RESPONSE_PATH} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-6\r\nabcdef\r\n0\r\n\r\n",
        id="negative-chunk",
    ),
    pytest.param(f"POST {RESPONSE_PATH} HTTP/1.1\r\nContent-Length: -99999999\r\n\r\n", id="negative-length"),
    pytest.param(f"POST {RESPONSE_PATH} HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", id="overflow"),
    pytest.param(f"POST {RESPONSE_PATH} HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n", id="length-not-a-number"),
    pytest.param(
        f"POST {RESPONSE_PATH} HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", id="cl-te"
    ),
    pytest.param(
        f"POST {RESPONSE_PATH} HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", id="duplicate-length"
    ),
    pytest.param(f"POST {RESPONSE_PATH} HTTP/1.1\r\nX-A: a\r\n folded\r\nContent-Length: 0\r\n\r\n", id="obs-fold"),
    pytest.param(f"POST {RESPONSE_PATH} HTTP/1.1\nContent-Length: 0\n\n", id="bare-lf"),
    pytest.param(f"POST {RESPONSE_PATH} HTTP/1.1\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n", id="nul-in-header"),
    pytest.param(f"POST {RESPONSE_PATH} HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", id="te-gzip"),
    pytest.param(f"POST {RESPONSE_PATH} HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n", id="te-identity"),
    pytest.param(f"POST {RESPONSE_PATH} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", id="chunk-not-hex"),
    pytest.param("GARBAGE\r\n\r\n", id="no-request-line"),
    pytest.param(f"POST {RESPONSE_PATH} HTTP/9.9\r\n\r\n", id="bad-version"),
    pytest.param("GET / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", id="upgrade"),
]


@pytest.mark.parametrize("request_text", MALFORMED)
async def test_malformed_request_is_a_400_and_reaches_nothing(server, request_text: str) -> None:  # type: ignore[no-untyped-def]
    _, host, port = server
    raw = await exchange(port, request_text.encode("latin-1"))
    assert status_of(raw) == 400, raw
    assert b"Connection: close" in raw
    assert host.responses == [] and host.errors == []
    await assert_still_serves(port, host)


async def test_chunk_extensions_and_trailers_are_accepted(server) -> None:  # type: ignore[no-untyped-def]
    _, host, port = server
    body = "3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n"
    raw = await exchange(port, f"POST {RESPONSE_PATH} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{body}".encode())
    assert status_of(raw) == 202
    assert host.responses == [b"abcde"]


async def test_endless_chunk_is_never_buffered(server) -> None:  # type: ignore[no-untyped-def]
    """`ffffffffff` announces a terabyte: the server reads at most MAX_DRAIN, then answers 413 and closes."""
    _, host, port = server
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {RESPONSE_PATH} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffff\r\n".encode())
    block = b"x" * (1 << 20)
    sent = 0
    with pytest.raises(ConnectionError):
        for _ in range(200):  # 200 MiB at most, far beyond MAX_DRAIN
            writer.write(block)
            await writer.drain()
            sent += len(block)
    assert sent <= runtime_api.MAX_DRAIN + 16 * len(block)  # stopped near the drain limit (socket buffers aside)
    growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert growth_kib < 64 * 1024, f"RSS grew by {growth_kib} KiB"
    assert host.too_large and host.too_large[0][0] > runtime_api.MAX_PAYLOAD
    writer.close()
    await assert_still_serves(port, host)


@pytest.mark.parametrize("path,is_error", [(RESPONSE_PATH, False), (ERROR_PATH, True)])
async def test_oversized_body_is_drained_so_the_runtime_reads_a_413(server, path: str, is_error: bool) -> None:  # type: ignore[no-untyped-def]
    """A 7 MB /error used to reset the connection; the runtime must read a clear 413 and the host must know."""
    _, host, port = server
    size = 7 * 1024 * 1024
    raw = await exchange(port, f"POST {path} HTTP/1.1\r\nContent-Length: {size}\r\n\r\n".encode() + b"e" * size)
    assert status_of(raw) == 413, raw[:200]
    body = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    assert body["errorType"] == "RequestEntityTooLarge"
    assert host.too_large == [(size, is_error)]
    assert host.responses == [] and host.errors == []


async def test_headers_over_the_limit_are_a_431(server) -> None:  # type: ignore[no-untyped-def]
    _, host, port = server
    big = "a" * (runtime_api.MAX_HEADER + 10)
    raw = await exchange(port, f"POST {RESPONSE_PATH} HTTP/1.1\r\nX-Big: {big}\r\n\r\n".encode())
    assert status_of(raw) == 431
    await assert_still_serves(port, host)


async def test_a_one_mib_xray_header_is_accepted(server) -> None:  # type: ignore[no-untyped-def]
    _, host, port = server
    cause = "c" * (1024 * 1024)
    request = f"POST {ERROR_PATH} HTTP/1.1\r\nLambda-Runtime-Function-XRay-Error-Cause: {cause}\r\n"
    raw = await exchange(port, (request + "Content-Length: 2\r\nConnection: close\r\n\r\n{}").encode())
    assert status_of(raw) == 202
    assert host.errors == [b"{}"]


@pytest.mark.parametrize(
    "partial",
    [
        pytest.param(f"POST {RESPONSE_PATH} HTTP/1.1\r\nContent-Le", id="partial-headers"),
        pytest.param(f"POST {RESPONSE_PATH} HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", id="partial-body"),
    ],
)
async def test_a_stalled_request_gets_a_408_and_is_closed(server, partial: str) -> None:  # type: ignore[no-untyped-def]
    api, host, port = server
    started = time.monotonic()
    raw = await exchange(port, partial.encode(), timeout=10)
    elapsed = time.monotonic() - started
    assert status_of(raw) == 408, raw
    assert api.limits.stall <= elapsed < api.limits.stall + 2.0
    assert host.responses == []


async def test_a_trickled_request_is_cut_at_the_read_deadline(server) -> None:  # type: ignore[no-untyped-def]
    """One byte every 0.2 s never stalls, but the whole request must still arrive within `read`."""
    api, _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(f"POST {RESPONSE_PATH} HTTP/1.1\r\nContent-Length: 1000\r\n\r\n".encode())
    closed = False
    while time.monotonic() - started < api.limits.read + 3:
        try:
            writer.write(b"x")
            await writer.drain()
        except ConnectionError:
            closed = True
            break
        if reader.at_eof() or (await _readable(reader)):
            closed = True
            break
        await asyncio.sleep(0.2)
    assert closed
    assert time.monotonic() - started < api.limits.read + 2.0
    writer.close()


async def _readable(reader: asyncio.StreamReader) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(65536), 0.01)
    except TimeoutError:
        return False
    return data == b"" or data.startswith(b"HTTP/1.1 408")


async def test_an_idle_keepalive_is_closed_but_a_waiting_next_is_not(server) -> None:  # type: ignore[no-untyped-def]
    api, host, port = server
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    next_reader, next_writer = await asyncio.open_connection("127.0.0.1", port)
    next_writer.write(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\n\r\n")
    await next_writer.drain()
    assert await asyncio.wait_for(idle_reader.read(), api.limits.idle + 3) == b""  # closed by the server
    await asyncio.sleep(api.limits.idle)  # the waiting /next outlives twice the idle limit
    host.work.put_nowait(pb.Invocation(request_id=REQUEST_ID, payload=b'{"k":1}'))
    head = await asyncio.wait_for(next_reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200") and b"Lambda-Runtime-Aws-Request-Id: req-1" in head
    idle_writer.close()
    next_writer.close()


async def test_a_runtime_that_goes_away_in_next_gets_no_invocation(server) -> None:  # type: ignore[no-untyped-def]
    _, host, port = server
    for how in ("close", "half-close"):
        calls = host.next_calls
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\n\r\n")
        await writer.drain()
        deadline = time.monotonic() + 5
        while host.next_calls == calls:  # the /next reached the host and waits there
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        cancelled = host.cancelled_nexts
        if how == "close":
            writer.close()
        else:
            writer.write_eof()
        deadline = time.monotonic() + 5
        while host.cancelled_nexts == cancelled:
            assert time.monotonic() < deadline, how
            await asyncio.sleep(0.01)
        writer.close()


async def test_pipelined_requests_are_served_in_order_but_bounded(server) -> None:  # type: ignore[no-untyped-def]
    _, host, port = server
    one = f"POST {RESPONSE_PATH} HTTP/1.1\r\nContent-Length: 1\r\n\r\n"
    raw = await exchange(
        port, "".join(one + str(i) for i in range(3)).encode() + b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n"
    )
    assert raw.count(b"HTTP/1.1 202") == 3 and raw.count(b"HTTP/1.1 404") == 1
    assert host.responses == [b"0", b"1", b"2"]
    flood = (one + "x") * 1000
    raw = await exchange(port, flood.encode())
    assert b"too many pipelined requests" in raw
    assert len(host.responses) < 3 + 1000


async def test_connections_per_sandbox_are_bounded(server) -> None:  # type: ignore[no-untyped-def]
    api, host, port = server
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(runtime_api.MAX_CONNECTIONS)]
    try:
        deadline = time.monotonic() + 5
        while len(api.connections) < runtime_api.MAX_CONNECTIONS:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        raw = await exchange(port, b"GET /2018-06-01/ping HTTP/1.1\r\n\r\n")
        assert status_of(raw) == 503
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 5
    while api.connections:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await assert_still_serves(port, host)


async def test_a_refused_peer_is_dropped_unserved() -> None:
    host = RecordingHost()
    api = runtime_api.RuntimeAPIServer(host, admit=lambda transport: False)
    port = await api.start()
    try:
        raw = await exchange(port, f"POST {RESPONSE_PATH} HTTP/1.1\r\nContent-Length: 2\r\n\r\nok".encode(), timeout=5)
        assert raw == b""
        assert host.responses == []
    except ConnectionResetError:
        assert host.responses == []
    finally:
        await api.close()


async def test_a_header_line_that_never_ends_is_refused_while_it_arrives(server) -> None:  # type: ignore[no-untyped-def]
    """llhttp buffers a header line until its end: a line sent in pieces without CRLF must still hit the limit."""
    _, host, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {RESPONSE_PATH} HTTP/1.1\r\nX-Endless: ".encode())
    block = b"a" * 65536
    sent = 0
    refused = False
    for _ in range(8 * runtime_api.MAX_HEADER // len(block)):
        try:
            writer.write(block)
            await writer.drain()
        except ConnectionError:
            refused = True
            break
        sent += len(block)
        await asyncio.sleep(0)
    answer = b""
    with contextlib.suppress(ConnectionError):
        answer = await asyncio.wait_for(reader.read(), 5)
    # Refused while still writing: the 431 may be lost to the reset that follows, but the connection is cut near
    # the limit (socket buffers aside), not after the 8 MiB the loop would send.
    assert refused or answer.startswith(b"HTTP/1.1 431"), answer[:100]
    assert sent < runtime_api.MAX_HEADER + runtime_api.HEAD_SLACK + 4 * 1024 * 1024
    writer.close()
    await assert_still_serves(port, host)


async def test_a_result_posted_just_before_the_runtime_goes_away_still_arrives(server) -> None:  # type: ignore[no-untyped-def]
    """Closing the connection right after a /response once cancelled the post half-way: the result was lost."""
    _, host, port = server
    host.post_delay = 0.2
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {RESPONSE_PATH} HTTP/1.1\r\nContent-Length: 4\r\n\r\ndone".encode())
    await writer.drain()
    writer.close()
    deadline = time.monotonic() + 5
    while host.responses != [b"done"]:
        assert time.monotonic() < deadline, host.responses
        await asyncio.sleep(0.02)


async def test_a_request_that_starts_in_the_same_read_as_the_previous_one_ends_still_has_a_deadline(server) -> None:  # type: ignore[no-untyped-def]
    api, _, port = server
    complete = f"POST {RESPONSE_PATH} HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"
    partial = f"POST {RESPONSE_PATH} HTTP/1.1\r\nContent-Length: 10\r\n\r\nab"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((complete + partial).encode())
    await writer.drain()
    started = time.monotonic()
    raw = await asyncio.wait_for(reader.read(), api.limits.stall + 5)
    assert raw.count(b"HTTP/1.1 202") == 1 and b"HTTP/1.1 408" in raw
    assert time.monotonic() - started < api.limits.stall + 2
    writer.close()
