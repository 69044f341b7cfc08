"""One log format for every kambda process (gateway, operator, agent), on stderr, flood-proof.

A misbehaving client can make a library log the same failure thousands of times a second (aiohttp logged a
traceback per malformed request: 431,231 of them, 194 MB in 15 s). `RateLimit` lets each message template through
at most `per_window` times a window and then says how many it held back; `OneLine` turns tracebacks of expected
exceptions (a client's malformed HTTP) into a single INFO line.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass
class _Window:
    start: float
    passed: int = 0
    suppressed: int = 0


class RateLimit(logging.Filter):
    """At most `per_window` records per message template (logger, level, unformatted message) per `window`
    seconds; the first record of the next window carries the count of those suppressed in between."""

    def __init__(self, per_window: int = 10, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.per_window = per_window
        self.window = window
        self.clock = clock
        self._windows: dict[tuple[str, int, str], _Window] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = self.clock()
        key = (record.name, record.levelno, str(record.msg))
        current = self._windows.get(key)
        if current is None or now - current.start >= self.window:
            suppressed = current.suppressed if current is not None else 0
            if len(self._windows) > 10_000:  # templates are few; a flood of distinct ones must not grow this
                self._windows.clear()
            current = self._windows[key] = _Window(start=now)
            if suppressed:
                record.msg = f"{record.msg} [{suppressed} similar messages suppressed in the last {self.window:g} s]"
        if current.passed >= self.per_window:
            current.suppressed += 1
            return False
        current.passed += 1
        return True


class OneLine(logging.Filter):
    """Records from `logger` (or its children) about an exception of one of `types`: one INFO line, no traceback.

    The exception's message replaces the traceback, so the line still says what was wrong."""

    def __init__(self, logger: str, types: tuple[type[BaseException], ...], level: int = logging.INFO) -> None:
        super().__init__()
        self.logger = logger
        self.types = types
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or not (record.name == self.logger or record.name.startswith(self.logger + ".")):
            return True
        exc = record.exc_info[1]
        if isinstance(exc, self.types):
            detail = (type(exc).__name__, " ".join(str(exc).split()))
            if isinstance(record.args, tuple):
                # Kept a template, so that RateLimit still sees one message however many clients misbehave.
                record.msg, record.args = f"{record.msg}: %s: %s", (*record.args, *detail)
            else:
                record.msg, record.args = "%s: %s: %s", (record.getMessage(), *detail)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = self.level, logging.getLevelName(self.level)
        return True


def configure(default_level: str = "INFO", filters: Iterable[logging.Filter] = ()) -> None:
    """Log to stderr; `filters` (e.g. `OneLine`) apply to every record before the rate limit."""
    logging.basicConfig(level=os.environ.get("KAMBDA_LOG_LEVEL", default_level), stream=sys.stderr, format=FORMAT)
    # Handler filters see every record that reaches the handler, including those propagated from other loggers
    # (a filter on the root logger would only see records logged to the root logger itself).
    for handler in logging.getLogger().handlers:
        if any(isinstance(f, RateLimit) for f in handler.filters):
            continue
        for f in filters:
            handler.addFilter(f)
        handler.addFilter(RateLimit())
