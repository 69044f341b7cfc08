"""The connection guard: its pure decisions with explicit times, then the guard itself in front of a real aiohttp
server on loopback, driven by a fake clock and explicit sweeps (no waiting for real timeouts)."""

from __future__ import annotations

import asyncio
import gzip
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from kambda import logs
from kambda.gateway import errors
from kambda.gateway.connections import (
    ConnectionState,
    Guard,
    Limits,
    Phase,
    Verdict,
    connection_limit,
    content_coding,
    decode_content,
    drains_on_shutdown,
    pick_victim,
)

LIMITS = Limits(header_timeout=15, body_timeout=60, idle_timeout=75, max_connections=100, linger=1)


# ---- the state machine --------------------------------------------------------------------------------------


def test_a_silent_connection_is_closed_after_the_header_timeout() -> None:
    state = ConnectionState.connected(100.0)
    assert state.verdict(114.99, LIMITS) is None
    assert state.verdict(115.0, LIMITS) is Verdict.SILENT


def test_the_header_timeout_runs_from_the_first_byte_of_the_head() -> None:
    state = ConnectionState.connected(100.0)
    state.data(110.0)
    state.data(120.0)  # more of the same head: the clock does not restart
    assert state.phase is Phase.HEAD
    assert state.verdict(124.99, LIMITS) is None
    assert state.verdict(125.0, LIMITS) is Verdict.HEADER_TIMEOUT


def test_a_request_being_handled_has_no_deadline_here() -> None:
    state = ConnectionState.connected(0.0)
    state.data(1.0)
    state.head_received(2.0)
    state.data(3.0)  # body bytes
    assert state.phase is Phase.REQUEST
    assert state.verdict(2.0 + 900 + 10, LIMITS) is None


def test_keep_alive_idle_then_a_new_head() -> None:
    state = ConnectionState.connected(0.0)
    state.data(0.0)
    state.head_received(0.1)
    state.request_done(5.0)
    assert (state.phase, state.requests) == (Phase.IDLE, 1)
    assert state.verdict(79.99, LIMITS) is None
    assert state.verdict(80.0, LIMITS) is Verdict.IDLE
    state.data(50.0)  # the next request starts: now the header timeout applies, from this byte
    assert state.verdict(64.99, LIMITS) is None
    assert state.verdict(65.0, LIMITS) is Verdict.HEADER_TIMEOUT


def test_the_rest_of_an_unread_body_is_not_a_new_head() -> None:
    state = ConnectionState.connected(0.0)
    state.data(0.0)
    state.head_received(0.0)
    state.request_done(1.0, body_complete=False, drain=10.0)  # answered without reading the body (e.g. a 413)
    assert state.phase is Phase.DRAINING
    state.data(5.0)  # more of that body, which aiohttp discards
    assert state.phase is Phase.DRAINING
    assert state.verdict(5.0 + 15, LIMITS) is None  # no 408 for it
    assert state.verdict(1.0 + 10 + 75, LIMITS) is Verdict.IDLE  # idle once draining is over
    state.data(12.0)  # after the drain: a new request
    assert (state.phase, state.since) == (Phase.HEAD, 12.0)


def test_closing_lingers_then_closes_whatever_arrives() -> None:
    state = ConnectionState.connected(0.0)
    state.data(1.0)
    state.closing(16.0)
    state.data(16.5)
    state.head_received(16.6)
    state.request_done(16.7)
    assert state.phase is Phase.CLOSING
    assert state.verdict(16.99, LIMITS) is None
    assert state.verdict(17.0, LIMITS) is Verdict.LINGERED


def test_a_response_nobody_reads_is_bounded_by_the_body_timeout() -> None:
    state = ConnectionState.connected(0.0)
    state.data(0.0)
    state.head_received(0.0)
    state.write_paused(10.0)
    state.write_paused(20.0)  # still the first pause that counts
    assert state.verdict(69.99, LIMITS) is None
    assert state.verdict(70.0, LIMITS) is Verdict.WRITE_STALLED
    state.write_resumed(69.0)
    assert state.verdict(1000.0, LIMITS) is None


def test_pick_victim_prefers_closing_then_the_longest_idle() -> None:
    def at(phase: Phase, since: float) -> ConnectionState:
        return ConnectionState(phase, since)

    busy = [("new", at(Phase.NEW, 0)), ("head", at(Phase.HEAD, 0)), ("request", at(Phase.REQUEST, 0)),
            ("draining", at(Phase.DRAINING, 0))]  # fmt: skip
    assert pick_victim(busy) is None
    idle = [("idle-5", at(Phase.IDLE, 5)), ("idle-2", at(Phase.IDLE, 2)), ("idle-9", at(Phase.IDLE, 9))]
    assert pick_victim(busy + idle) == "idle-2"
    assert pick_victim([*busy, *idle, ("closing", at(Phase.CLOSING, 50))]) == "closing"
    assert pick_victim([]) is None


def test_only_requests_with_their_whole_body_drain_on_shutdown() -> None:
    request = ConnectionState(Phase.REQUEST, 0)
    assert drains_on_shutdown(request, body_complete=True)
    assert not drains_on_shutdown(request, body_complete=False)  # stalled mid-body
    for phase in (Phase.NEW, Phase.HEAD, Phase.IDLE, Phase.DRAINING, Phase.CLOSING):
        assert not drains_on_shutdown(ConnectionState(phase, 0), body_complete=True)


@pytest.mark.parametrize(
    ("requested", "open_files", "expected"),
    [
        (10_000, 1_048_576, 10_000),
        (10_000, 20_000, 10_000),
        (10_000, 4096, 4096 - 409),
        (10_000, 1024, 768),
        (5, 100, 1),
    ],
)
def test_connection_limit_stays_below_the_open_file_limit(requested: int, open_files: int, expected: int) -> None:
    assert connection_limit(requested, open_files) == expected


def test_sweeps_are_frequent_enough_for_short_limits() -> None:
    assert Limits().tick == 1.0
    assert Limits(header_timeout=2, body_timeout=3, idle_timeout=3).tick == 0.5


# ---- bodies -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "coding"),
    [(None, "identity"), ("", "identity"), ("identity", "identity"), ("GZip", "gzip"), ("x-gzip", "gzip"),
     ("gzip, identity", "gzip"), ("deflate", "deflate")],
)  # fmt: skip
def test_content_coding(header: str | None, coding: str) -> None:
    assert content_coding(header) == coding


@pytest.mark.parametrize("header", ["br", "zstd", "compress", "gzip, gzip", "gzip, deflate", "nonsense"])
def test_unsupported_content_codings_are_415(header: str) -> None:
    with pytest.raises(errors.AWSError) as refused:
        content_coding(header)
    assert (refused.value.status, refused.value.error_type) == (415, "UnsupportedMediaTypeException")


def _refusal(raw: bytes, coding: str, limit: int) -> tuple[int, str]:
    with pytest.raises(errors.AWSError) as refused:
        decode_content(raw, coding, limit, "too large")
    return refused.value.status, refused.value.error_type


def test_decode_content() -> None:
    body = b'{"hello": "world"}' * 100
    assert decode_content(body, "identity", 10, "too large") == body  # identity is never checked here
    assert decode_content(gzip.compress(body), "gzip", len(body), "too large") == body
    assert decode_content(gzip.compress(body[:7]) + gzip.compress(body[7:]), "gzip", 10_000, "x") == body  # members
    assert decode_content(zlib.compress(body), "deflate", 10_000, "too large") == body
    raw_deflate = zlib.compressobj(wbits=-15)
    assert decode_content(raw_deflate.compress(body) + raw_deflate.flush(), "deflate", 10_000, "too large") == body
    assert decode_content(b"", "gzip", 10, "too large") == b""


def test_decode_content_refusals() -> None:
    body = b"x" * 1000
    assert _refusal(gzip.compress(body), "gzip", 999) == (413, "RequestEntityTooLargeException")
    assert _refusal(b'{"not": "gzip"}', "gzip", 1000) == (400, "InvalidRequestContentException")
    assert _refusal(gzip.compress(body)[:-12], "gzip", 1000) == (400, "InvalidRequestContentException")
    assert _refusal(zlib.compress(body) + b"junk", "deflate", 1000) == (400, "InvalidRequestContentException")
    assert _refusal(gzip.compress(body) + b"junk", "gzip", 1000) == (400, "InvalidRequestContentException")


def test_a_gzip_bomb_is_never_decompressed_past_the_limit() -> None:
    # 1 GiB of zeros in ~1 MiB; decompressing it whole would take a gigabyte.
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\0" * (1 << 20)
    first = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    bomb = first + repeated * 1023
    assert _refusal(bomb, "gzip", 6 * 1024 * 1024) == (413, "RequestEntityTooLargeException")


# ---- the guard in front of a real aiohttp server ------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Served:
    def __init__(self, guard: Guard, clock: FakeClock, port: int, release: asyncio.Event) -> None:
        self.guard, self.clock, self.port, self.release = guard, clock, port, release

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def settle(self, condition: Callable[[], bool], timeout: float = 5) -> None:
        """Let the loop run until the server side has caught up with what the client did."""
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.005)

    def phases(self) -> list[Phase]:
        return sorted((c.state.phase for c in self.guard._live), key=lambda p: p.value)


async def _handler(release: asyncio.Event) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/slow":
            await release.wait()
        if request.path == "/big":
            return web.Response(body=b"x" * (64 << 20))
        return web.Response(text="ok")

    return handle


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    clock = FakeClock()
    release = asyncio.Event()
    guard = Guard(Limits(header_timeout=15, body_timeout=60, idle_timeout=75, max_connections=3, linger=1), clock)
    server = web.Server(
        await _handler(release),
        access_log=logging.getLogger("test.access"),
        access_log_class=guard.access_log_class(),
        keepalive_timeout=3600,  # only the guard closes connections here
    )
    guard.attach(server)
    listener = await asyncio.get_running_loop().create_server(guard.protocol, "127.0.0.1", 0)
    try:
        yield Served(guard, clock, listener.sockets[0].getsockname()[1], release)
    finally:
        release.set()
        listener.close()
        await server.shutdown(1)


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str = "/") -> bytes:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
    return head + await reader.readexactly(length)


async def test_guard_answers_a_stalled_head_with_408_then_closes(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
    await served.settle(lambda: served.phases() == [Phase.HEAD])
    served.clock.now += 14.9
    assert not served.guard.sweep()
    served.clock.now += 0.1
    assert served.guard.sweep() == {Verdict.HEADER_TIMEOUT: 1}
    answer = await asyncio.wait_for(reader.read(), 5)  # ...and our side is closed (EOF) after the answer
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"x-amzn-ErrorType: RequestTimeoutException\r\n" in answer
    assert b"Connection: close\r\n" in answer
    writer.close()


async def test_guard_closes_silent_and_idle_connections(served: Served) -> None:
    _, silent = await served.connect()
    reader, idle = await served.connect()
    await served.settle(lambda: len(served.guard) == 2)
    assert (await _get(reader, idle)).startswith(b"HTTP/1.1 200")
    await served.settle(lambda: served.phases() == [Phase.IDLE, Phase.NEW])
    served.clock.now += 15
    assert served.guard.sweep() == {Verdict.SILENT: 1}
    served.clock.now += 60
    assert served.guard.sweep() == {Verdict.IDLE: 1}
    assert await asyncio.wait_for(reader.read(), 5) == b""
    await served.settle(lambda: len(served.guard) == 0)
    silent.close()
    idle.close()


async def test_guard_evicts_the_longest_idle_keep_alive_connection(served: Served) -> None:
    streams = []
    for _ in range(3):
        reader, writer = await served.connect()
        assert (await _get(reader, writer)).startswith(b"HTTP/1.1 200")
        streams.append((reader, writer))
        served.clock.now += 1
    reader, writer = await served.connect()
    assert (await _get(reader, writer)).startswith(b"HTTP/1.1 200")  # the fourth is served...
    assert await asyncio.wait_for(streams[0][0].read(), 5) == b""  # ...in place of the oldest idle one
    for other_reader, other_writer in streams[1:]:
        assert (await _get(other_reader, other_writer)).startswith(b"HTTP/1.1 200")  # evicting one was enough
    for _, w in [*streams, (reader, writer)]:
        w.close()


async def test_guard_refuses_with_503_when_every_connection_is_busy(served: Served) -> None:
    writers = []
    for _ in range(3):
        _, writer = await served.connect()
        writer.write(b"GET / HTTP/1.1\r\n")
        writers.append(writer)
    await served.settle(lambda: served.phases() == [Phase.HEAD] * 3)
    reader, writer = await served.connect()
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Retry-After: 1\r\n" in answer and b"x-amzn-ErrorType: ServiceException\r\n" in answer
    assert b'"Type": "Service"' in answer
    for w in [*writers, writer]:
        w.close()


async def test_guard_aborts_a_response_nobody_reads(served: Served) -> None:
    _, writer = await served.connect()
    writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")  # ...and never read the 64 MiB answer
    await served.settle(lambda: any(c.state.write_paused_since is not None for c in served.guard._live))
    (conn,) = served.guard._live
    served.clock.now += 59.9
    assert not served.guard.sweep()
    served.clock.now += 0.1
    assert served.guard.sweep() == {Verdict.WRITE_STALLED: 1}
    # Closed for real (connection_lost), not merely asked to close once its unsendable buffer has drained.
    await served.settle(lambda: conn.handler not in served.guard._by_handler)
    writer.close()


async def test_guard_shutdown_closes_the_idle_and_lets_in_flight_requests_finish(served: Served) -> None:
    reader_idle, idle = await served.connect()
    assert (await _get(reader_idle, idle)).startswith(b"HTTP/1.1 200")
    _, stalled = await served.connect()
    stalled.write(b"GET / HTTP/1.1\r\n")
    reader, busy = await served.connect()
    busy.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await served.settle(lambda: served.phases() == [Phase.HEAD, Phase.IDLE, Phase.REQUEST])

    async def answer_later() -> None:
        await served.settle(lambda: len(served.guard) == 1)  # the idle and the stalled are gone first
        served.release.set()

    releasing = asyncio.create_task(answer_later())
    await asyncio.wait_for(served.guard.shutdown(grace=10), 5)  # a real-time bound on a fake-clock grace
    await releasing
    assert await asyncio.wait_for(reader_idle.read(), 5) == b""
    answer = await asyncio.wait_for(reader.read(), 5)  # the in-flight request was answered, then closed
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"ok")
    for w in (idle, stalled, busy):
        w.close()


# ---- logs: the flood a stream of malformed requests causes ---------------------------------------------------


def _record(
    msg: str, *args: object, name: str = "aiohttp.server", exc: BaseException | None = None
) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, exc_info)


def test_rate_limit_lets_a_template_through_n_times_a_window_then_counts() -> None:
    clock = FakeClock()
    limit = logs.RateLimit(per_window=3, window=60, clock=clock)
    passed = [limit.filter(_record("Error handling request from %s", f"10.0.0.{i}")) for i in range(10)]
    assert passed == [True] * 3 + [False] * 7
    assert limit.filter(_record("another template"))  # counted separately
    clock.now += 60
    record = _record("Error handling request from %s", "10.0.0.99")
    assert limit.filter(record)
    assert record.getMessage() == (
        "Error handling request from 10.0.0.99 [7 similar messages suppressed in the last 60 s]"
    )


def test_one_line_turns_expected_tracebacks_into_an_info_line() -> None:
    one_line = logs.OneLine("aiohttp.server", (ValueError,))
    record = _record("Error handling request from %s", "127.0.0.1", exc=ValueError("Invalid method\n  b'GE T'"))
    assert one_line.filter(record)
    assert record.exc_info is None and record.levelno == logging.INFO
    assert record.getMessage() == "Error handling request from 127.0.0.1: ValueError: Invalid method b'GE T'"
    assert record.msg == "Error handling request from %s: %s: %s"  # still one template for the rate limit
    unexpected = _record("Error handling request from %s", "127.0.0.1", exc=KeyError("bug"))
    assert one_line.filter(unexpected) and unexpected.exc_info is not None  # real bugs keep their traceback
    elsewhere = _record("boom", name="kambda.gateway", exc=ValueError("x"))
    assert one_line.filter(elsewhere) and elsewhere.exc_info is not None
