"""Property-based fuzzing of the agent's Runtime API server: whatever a runtime sends, the agent answers with a
non-5xx status within its deadlines, and goes on serving.

2,400 generated requests a run: half from a fixed seed (the same every run, so a regression is caught at once)
and half from a seed that changes every day (printed; `KAMBDA_FUZZ_SEED=<n>` replays a run). Requests are built
from the parts a runtime controls — method, path, headers, framing (exact, chunked with extensions and trailers,
short, long, negative, huge) and body — and then sometimes mangled byte by byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from kambda.runtime.agent import runtime_api
from kambda.runtime.rpc import runtime_pb2 as pb
from tests.conftest import wait_until

EXAMPLES = 1200
LIMITS = runtime_api.Limits(stall=0.3, read=1.0, idle=2.0)
ALLOWED = {200, 202, 400, 403, 404, 405, 408, 413, 431}
FIXED_SEED = 20261201


def rotating_seed() -> int:
    override = os.environ.get("KAMBDA_FUZZ_SEED")
    return int(override) if override else int(datetime.date.today().strftime("%Y%m%d")) * 7 + 1


class ImmediateHost:
    """A sandbox whose runtime always has work waiting: /next answers at once, posts are checked like a sandbox."""

    def __init__(self) -> None:
        self.current = "fuzz-1"
        self.counter = 1

    async def next_invocation(self) -> tuple[pb.Invocation, int]:
        self.counter += 1
        self.current = f"fuzz-{self.counter}"
        return pb.Invocation(request_id=self.current, payload=b"{}"), int(time.time() * 1000) + 3000

    def _check(self, request_id: str) -> None:
        if request_id != self.current:
            raise runtime_api.UnknownRequest(request_id)

    async def post_response(self, request_id: str, body: bytes) -> None:
        self._check(request_id)

    async def post_error(self, request_id: str, body: bytes, error_type_header: str | None) -> None:
        self._check(request_id)

    async def post_init_error(self, body: bytes, error_type_header: str | None) -> None:
        raise runtime_api.InvalidState("init already completed")

    async def payload_too_large(self, request_id: str, size: int, *, error: bool) -> None:
        self._check(request_id)


class ServerThread:
    """The real server on its own event loop, so the (synchronous) hypothesis test can talk to it over sockets."""

    def __init__(self) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self.server = runtime_api.RuntimeAPIServer(ImmediateHost(), limits=LIMITS)
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.port = self.loop.run_until_complete(self.server.start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    thread = ServerThread()
    yield thread
    thread.stop()


PATHS = st.sampled_from(
    [
        "/2018-06-01/runtime/invocation/next",
        "/2018-06-01/runtime/invocation/{id}/response",
        "/2018-06-01/runtime/invocation/{id}/error",
        "/2018-06-01/runtime/invocation/other-id/response",
        "/2018-06-01/runtime/init/error",
        "/2018-06-01/ping",
        "/2018-06-01/runtime/invocation//response",
        "/2018-06-01/runtime/invocation/{id}/response?x=1",
        "/",
        "*",
        "/2018-06-01/runtime/invocation/%00/error",
    ]
) | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40).map(lambda s: "/" + s)
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "BREW", "get"])
HEADER_NAMES = st.sampled_from(
    [
        "Lambda-Runtime-Function-Error-Type",
        "Lambda-Runtime-Function-XRay-Error-Cause",
        "Content-Type",
        "Connection",
        "Expect",
        "X-Junk",
        "Host",
    ]
) | st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20)
HEADER_VALUES = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60) | st.sampled_from(
    ["close", "keep-alive", "100-continue", "Runtime.Foo", "application/json"]
)
BODIES = (
    st.binary(max_size=300)
    | st.sampled_from([b"{}", b'{"errorType":"X","errorMessage":"m"}', b"[" * 5000, b"\xff\xfe\x00"])
    | st.integers(min_value=0, max_value=8).map(lambda n: b"x" * (n * 1_000_000))
)
# Weighted by repetition: most requests are well framed (so they reach the handler), some are not.
FRAMINGS = st.sampled_from(["exact"] * 8 + ["chunked"] * 4 + ["none", "short", "long", "negative", "huge-chunk", "te"])
MANGLE = st.sampled_from([None] * 6 + ["insert", "delete", "flip"])


def frame(framing: str, body: bytes, chunk_sizes: list[int], extension: str, trailer: bool) -> tuple[list[str], bytes]:
    if framing == "exact":
        return [f"Content-Length: {len(body)}"], body
    if framing == "none":
        return [], b""
    if framing == "short":  # a body shorter than announced: the stall deadline must end it
        return [f"Content-Length: {len(body) + 10}"], body
    if framing == "long":  # more than announced: the rest is the next (garbage) request
        return [f"Content-Length: {max(0, len(body) - 3)}"], body
    if framing == "negative":
        return ["Content-Length: -5"], body
    if framing == "te":
        return ["Transfer-Encoding: gzip, chunked"], b"0\r\n\r\n"
    if framing == "huge-chunk":
        return ["Transfer-Encoding: chunked"], b"ffffffffffffffffffff\r\n" + body
    out = bytearray()
    position = 0
    for size in chunk_sizes or [len(body)]:
        piece = body[position : position + size]
        position += size
        if piece:
            out += f"{len(piece):x}{extension}\r\n".encode() + piece + b"\r\n"
    out += b"0\r\n" + (b"X-Trailer: t\r\n" if trailer else b"") + b"\r\n"
    return ["Transfer-Encoding: chunked"], bytes(out)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(METHODS)
    path = draw(PATHS)
    headers = [f"{draw(HEADER_NAMES)}: {draw(HEADER_VALUES)}" for _ in range(draw(st.integers(0, 4)))]
    framing_headers, body = frame(
        draw(FRAMINGS),
        draw(BODIES),
        draw(st.lists(st.integers(1, 100), max_size=5)),
        draw(st.sampled_from(["", ";ext", ";a=b;c"])),
        draw(st.booleans()),
    )
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(h + "\r\n" for h in [*headers, *framing_headers]) + "\r\n"
    data = bytearray(head.encode("latin-1", errors="replace") + body)
    mangle = draw(MANGLE)
    if mangle and data:
        at = draw(st.integers(0, min(len(data), len(head)) - 1))
        if mangle == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif mangle == "delete":
            del data[at]
        else:
            data[at] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


def send(port: int, data: bytes, request_id: str) -> tuple[int | None, float]:
    """One request on a fresh connection; the status the server answered (None: it closed) and how long it took."""
    data = data.replace(b"{id}", request_id.encode())
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=LIMITS.read + 3) as s:
        # The server may stop reading an oversized body and close: what it answered is still readable.
        with contextlib.suppress(OSError):
            s.sendall(data)
        answer = b""
        try:
            while b"\r\n" not in answer:
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except ConnectionResetError:
            pass
    elapsed = time.monotonic() - started
    if not answer.startswith(b"HTTP/1.1 "):
        return None, elapsed
    return int(answer.split(b" ", 2)[1]), elapsed


def check(server: ServerThread, data: bytes) -> None:
    host = server.server.host
    assert isinstance(host, ImmediateHost)
    status, elapsed = send(server.port, data, host.current)
    assert elapsed < LIMITS.read + 2.5, f"no answer within the deadlines ({elapsed:.2f} s) to {data[:200]!r}"
    assert status is not None, f"closed without an answer to {data[:200]!r}"
    assert status in ALLOWED, f"{status} to {data[:200]!r}"


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


@FUZZ
@seed(FIXED_SEED)
@given(data=requests())
def test_fuzz_fixed_seed(server: ServerThread, data: bytes) -> None:
    check(server, data)


def test_fuzz_rotating_seed(server: ServerThread) -> None:
    value = rotating_seed()
    print(f"\nRuntime API fuzz: rotating seed {value} (replay with KAMBDA_FUZZ_SEED={value})")

    @FUZZ
    @seed(value)
    @given(data=requests())
    def run(data: bytes) -> None:
        check(server, data)

    run()


def test_the_server_is_healthy_after_fuzzing(server: ServerThread) -> None:
    host = server.server.host
    assert isinstance(host, ImmediateHost)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\n\r\n")
        head = s.recv(65536)
        assert head.startswith(b"HTTP/1.1 200")
        rid = host.current.encode()
        s.sendall(b"POST /2018-06-01/runtime/invocation/" + rid + b"/response HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
        assert s.recv(65536).startswith(b"HTTP/1.1 202")
    # Nothing the fuzzer opened stays open.
    assert wait_until(lambda: not server.server.connections, timeout=LIMITS.idle + 3, interval=0.05)
