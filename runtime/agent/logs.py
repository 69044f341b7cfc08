"""Capture of a runtime process's stdout and stderr.

The pipe is read without blocking as data arrives, and `drain()` reads whatever is still in it on demand: when the
runtime posts a response, everything it printed before that is already in the pipe, so draining first makes the
invocation's log (and the Tail the caller sees) complete without waiting or guessing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

from . import reports

Sink = Callable[[bytes], None]


class LogCapture:
    """Reads one runtime's output pipe; forwards every byte to `sink` and keeps the current invocation's log."""

    def __init__(self, fd: int, sink: Sink, *, loop: asyncio.AbstractEventLoop) -> None:
        self._fd = fd
        self._sink = sink
        self._loop = loop
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
            self._sink(chunk)
            self._buffer += chunk
            # Only the last 4 KiB is ever returned to a caller; keep a little more so lines are not cut mid-way.
            if len(self._buffer) > 4 * reports.LOG_TAIL_BYTES:
                del self._buffer[: -2 * reports.LOG_TAIL_BYTES]

    def note(self, line: str) -> None:
        """A line the agent writes itself (START / END / REPORT): same sink, same buffer, in order."""
        self.drain()
        data = line.encode()
        self._sink(data)
        self._buffer += data

    def take(self) -> bytes:
        """The log since the previous `take`, then start afresh."""
        self.drain()
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def close(self) -> None:
        if self._open:
            self._open = False
            self._loop.remove_reader(self._fd)
            with contextlib.suppress(OSError):
                os.close(self._fd)
