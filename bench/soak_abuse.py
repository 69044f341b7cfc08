"""The soak's abusive traffic: malformed HTTP, bad and deeply nested JSON, oversized bodies and headers, and
connections that stall mid-request and are then dropped. Each kind has the answers a healthy gateway may give; any
other answer (a 5xx, a hang) is counted as wrong."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

PATH = "/2015-03-31/functions/{}/invocations"
CLOSED = None  # the gateway closed the connection without answering: fine for a request it cannot even parse
READ_TIMEOUT = 15.0  # an answer (or a close) must come within this; otherwise the request hung
EVENT = {"X-Amz-Invocation-Type": "Event"}
DEEP = b"[" * 100_000 + b"]" * 100_000  # valid JSON, 100,000 levels deep

# Raw bytes on a fresh connection, and what may come back.
RAW: dict[str, tuple[bytes, set[int | None]]] = {
    "garbage-request-line": (b"GARBAGE\r\n\r\n", {400, CLOSED}),
    "bad-http-version": (f"POST {PATH.format('echo')} HTTP/9.9\r\nHost: x\r\n\r\n".encode(), {400, 505, CLOSED}),
    "negative-content-length": (
        f"POST {PATH.format('echo')} HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{{}}".encode(),
        {400, CLOSED},
    ),
    "bad-chunk": (
        f"POST {PATH.format('echo')} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".encode(),
        {400, CLOSED},
    ),
    "tls-to-plain-port": (bytes.fromhex("16 03 01 02 00 01 00 01 fc 03 03") + bytes(64), {400, CLOSED}),
    "truncated-body": (  # sent, then the write side shut: the body never completes
        f'POST {PATH.format("echo")} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{"cut'.encode(),
        {400, CLOSED},
    ),
}
# Well-formed HTTP with a bad payload or headers: (function, headers, body, answers).
HTTP: dict[str, tuple[str, dict[str, str], bytes, set[int | None]]] = {
    "bad-json": ("echo", {}, b"{not json", {400}),
    "deep-json": ("echo", {}, DEEP, {400}),
    "deep-json-event": ("recorded", EVENT, DEEP, {400}),
    "huge-headers": ("echo", {"X-Huge": "h" * 40_000}, b"{}", {431, 400, CLOSED}),
    "unknown-function": ("nope", {}, b"{}", {404}),
    # Too large: the gateway may answer 413 before reading it all, or close the connection while we still send.
    "oversized-sync": ("echo", {}, b"x" * (6 * 1024 * 1024 + 1), {413, CLOSED}),
    "oversized-event": ("recorded", EVENT, b'"' + b"x" * (1024 * 1024) + b'"', {413, CLOSED}),
}
WEIGHTS = {name: 1.0 for name in [*RAW, *HTTP]} | {"oversized-sync": 0.05, "oversized-event": 0.1, "deep-json": 0.3}


HUNG = -1  # neither an answer nor a close in time, or not HTTP at all: never right


@dataclass
class AbuseTotals:
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, answer) -> count
    wrong: int = 0
    examples: list[str] = field(default_factory=list)  # the first few wrong answers, for the report
    stalled: Counter[str] = field(default_factory=Counter)  # dropped by us | closed by the gateway | refused

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    def record(self, kind: str, status: int | None, detail: str = "") -> None:
        answer = "closed" if status is None else "hung" if status == HUNG else str(status)
        self.outcomes[kind, answer] += 1
        allowed = RAW[kind][1] if kind in RAW else HTTP[kind][3]
        if status not in allowed:
            self.wrong += 1
            if len(self.examples) < 10:
                self.examples.append(f"{kind}: {answer} {detail}".strip())


def _status(line: bytes) -> int | None:
    parts = line.split()
    return int(parts[1]) if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() else HUNG


async def raw_request(port: int, kind: str, totals: AbuseTotals) -> None:
    data, _ = RAW[kind]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        totals.record(kind, HUNG, f"connect: {exc}")
        return
    try:
        writer.write(data)
        await writer.drain()
        if kind == "truncated-body":
            writer.write_eof()
        line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
        totals.record(kind, _status(line) if line else CLOSED, line[:80].decode(errors="replace"))
    except TimeoutError:
        totals.record(kind, HUNG, "no answer and no close")
    except (ConnectionError, OSError):
        totals.record(kind, CLOSED)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def http_request(base: str, kind: str, totals: AbuseTotals) -> None:
    function, headers, body, _ = HTTP[kind]
    # Its own connection each time: a request the gateway cuts off must not poison a pooled connection.
    timeout = aiohttp.ClientTimeout(total=READ_TIMEOUT + 30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            async with session.post(base + PATH.format(function), data=body, headers=headers) as r:
                await r.read()
                totals.record(kind, r.status)
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError):
            totals.record(kind, CLOSED)
        except TimeoutError:
            totals.record(kind, HUNG)
        except aiohttp.ClientError as exc:
            totals.record(kind, HUNG, repr(exc))


async def abuse(base: str, port: int, per_second: float, totals: AbuseTotals, stop: asyncio.Event) -> None:
    rng = random.Random(7)
    kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
    while not stop.is_set():
        kind = rng.choices(kinds, weights)[0]
        if kind in RAW:
            await raw_request(port, kind, totals)
        else:
            await http_request(base, kind, totals)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.expovariate(per_second))


STALLS = {
    "partial-headers": f"POST {PATH.format('echo')} HTTP/1.1\r\nHost: x\r\nContent-Le".encode(),
    "partial-body": f'POST {PATH.format("echo")} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{"a"'.encode(),
    "silent": b"",
}


async def _stall_one(port: int, rng: random.Random, totals: AbuseTotals, stop: asyncio.Event) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        totals.stalled["refused"] += 1
        return
    try:
        writer.write(STALLS[rng.choice(list(STALLS))])
        await writer.drain()
        # Hold it; the gateway may give up first (an answer or a close), which is as good.
        read = asyncio.ensure_future(reader.read(65536))
        held = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({read, held}, timeout=rng.uniform(2, 20), return_when=asyncio.FIRST_COMPLETED)
        held.cancel()
        if read in done:
            totals.stalled["closed-by-gateway"] += 1
        else:
            read.cancel()
            totals.stalled["dropped"] += 1
            if rng.random() < 0.5:  # half of them with a reset rather than a FIN
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def stalls(port: int, at_once: int, totals: AbuseTotals, stop: asyncio.Event) -> None:
    """Keep `at_once` stalled connections open, each held 2-20 s and then dropped."""
    rng = random.Random(11)

    async def slot() -> None:
        while not stop.is_set():
            await _stall_one(port, rng, totals, stop)

    await asyncio.gather(*(slot() for _ in range(at_once)))
