"""Capture of a runtime process's stdout and stderr.

The pipe is read without blocking as data arrives, and `drain()` reads whatever is still in it on demand: when the
runtime posts a response, everything it printed before that is already in the pipe, so draining first makes the
invocation's log (and the Tail the caller sees) complete without waiting or guessing.

In the JSON log format Lambda filters a function's output by its applicationLogLevel, one line at a time
(`LevelFilter`): a line that is a JSON object with a `level` has that level, any other line (a plain `print`,
which Lambda leaves as plain text) is INFO. So at WARN a handler's prints go, as on Lambda. The runtime's own
clients filter their logging methods themselves (awslambdaric, aws-lambda-ric); this catches everything else.
In the Text format nothing is filtered and bytes pass exactly as written.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

from kambda import jsontext, logconfig

from . import reports

Sink = Callable[[bytes], None]

# CloudWatch Logs takes events of at most 256 KiB: a longer line is judged (and kept or dropped) in pieces of at
# most this size, so the filter never holds more than one of them however long a line the runtime writes.
MAX_RECORD_BYTES = 256 * 1024
# Spellings of the levels that runtimes' libraries write beside Lambda's own (Python's logging module).
_LEVEL_ALIASES = {"WARNING": "WARN", "CRITICAL": "FATAL"}


def record_level(line: bytes) -> str:
    """The level Lambda gives one line of a function's output: a JSON object's `level` in any case, else INFO
    ("If the level field is invalid or missing, Lambda assigns the log output the level INFO")."""
    if not line.lstrip().startswith(b"{"):
        return logconfig.DEFAULT_LEVEL  # not JSON: the common case decided without parsing
    try:
        record = jsontext.loads(line)  # never RecursionError, whatever the runtime nests
    except ValueError:  # not JSON, or not UTF-8
        return logconfig.DEFAULT_LEVEL
    level = record.get("level") if isinstance(record, dict) else None
    if not isinstance(level, str):
        return logconfig.DEFAULT_LEVEL
    name = _LEVEL_ALIASES.get(level.upper(), level.upper())
    return name if name in logconfig.APPLICATION_LEVELS else logconfig.DEFAULT_LEVEL


def _cut(data: bytes, start: int, limit: int) -> int:
    """Where a piece of at most `limit` bytes of `data` from `start` ends, not splitting a UTF-8 character."""
    end = start + limit
    # Step back over continuation bytes (10xxxxxx) to the start of the character the limit falls in.
    while end > start and data[end] & 0xC0 == 0x80:
        end -= 1
    return end if end > start else start + limit  # not UTF-8 at all: any cut is as good as another


class LevelFilter:
    """Lambda's application log-level filter over a byte stream: keeps complete lines at `threshold` or above.
    A line split across reads is held until its end arrives (at most MAX_RECORD_BYTES of it)."""

    def __init__(self, threshold: str, *, max_record: int = MAX_RECORD_BYTES) -> None:
        self._threshold = threshold
        self._max_record = max_record
        self._partial = b""

    def feed(self, chunk: bytes) -> bytes:
        """The kept lines that `chunk` completes, each with its newline."""
        data = self._partial + chunk
        kept: list[bytes] = []
        start = 0
        while True:
            newline = data.find(b"\n", start, start + self._max_record + 1)
            if newline >= 0:
                end = newline + 1
                piece = data[start:end]
            elif len(data) - start > self._max_record:
                end = _cut(data, start, self._max_record)
                piece = data[start:end] + b"\n"  # a piece of a long line is a record of its own
            else:
                break
            start = end
            if self._keeps(piece):
                kept.append(piece)
        self._partial = data[start:]
        return b"".join(kept)

    def flush(self) -> bytes:
        """The line still unfinished, as a record of its own (an invocation, or the runtime, ended before it)."""
        if not self._partial:
            return b""
        piece, self._partial = self._partial + b"\n", b""
        return piece if self._keeps(piece) else b""

    def _keeps(self, line: bytes) -> bool:
        return logconfig.keeps(self._threshold, record_level(line))


def application_filter(log_format: str, application_log_level: str | None) -> LevelFilter | None:
    """The filter a runtime's output goes through: only in the JSON format, and not at TRACE (which keeps all)."""
    if log_format != logconfig.JSON:
        return None
    threshold = application_log_level or logconfig.DEFAULT_LEVEL
    return None if threshold == logconfig.APPLICATION_LEVELS[0] else LevelFilter(threshold)


class LogCapture:
    """Reads one runtime's output pipe; forwards every byte to `sink` and keeps the current invocation's log.
    With a `level_filter` only the lines it keeps are forwarded and kept (what Lambda would send to CloudWatch)."""

    def __init__(
        self, fd: int, sink: Sink, *, loop: asyncio.AbstractEventLoop, level_filter: LevelFilter | None = None
    ) -> None:
        self._fd = fd
        self._sink = sink
        self._loop = loop
        self._filter = level_filter
        self._buffer = bytearray()  # since the last invocation ended (includes init output on a cold start)
        os.set_blocking(fd, False)
        loop.add_reader(fd, self.drain)
        self._open = True

    def drain(self) -> None:
        while self._open:
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:  # EOF: the runtime (and everything holding the pipe) is gone
                self.close()
                return
            self._emit(chunk if self._filter is None else self._filter.feed(chunk))

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        self._sink(data)
        self._buffer += data
        # Only the last 4 KiB is ever returned to a caller; keep a little more so lines are not cut mid-way.
        if len(self._buffer) > 4 * reports.LOG_TAIL_BYTES:
            del self._buffer[: -2 * reports.LOG_TAIL_BYTES]

    def _flush_partial(self) -> None:
        # A line the runtime has not finished is closed before anything follows it, so that each line the agent
        # writes starts a line of its own and is judged on its own (in the Text format bytes pass as written).
        if self._filter is not None:
            self._emit(self._filter.flush())

    def note(self, line: str) -> None:
        """A line the agent writes itself (START / END / REPORT): same sink, same buffer, in order."""
        self.drain()
        self._flush_partial()
        self._emit(line.encode())  # nothing at all when the system log level drops the line

    def take(self) -> bytes:
        """The log since the previous `take`, then start afresh."""
        self.drain()
        self._flush_partial()
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def close(self) -> None:
        if self._open:
            self._open = False
            self._loop.remove_reader(self._fd)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._flush_partial()
