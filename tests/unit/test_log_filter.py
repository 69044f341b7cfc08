"""The application log-level filter of the JSON log format (runtime/agent/logs.py): the level Lambda gives each line,
lines split across reads, multi-byte characters and lines longer than a record, and the capture of a real pipe."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from kambda.runtime.agent import logs

WARN_RECORD = b'{"timestamp": "2024-01-01T00:00:00Z", "level": "WARNING", "message": "careful", "logger": "root"}\n'
INFO_RECORD = b'{"timestamp": "2024-01-01T00:00:00Z", "level": "INFO", "message": "fine"}\n'


@pytest.mark.parametrize(
    ("line", "level"),
    [
        (b"hello from print\n", "INFO"),  # plain text has no level: INFO (Lambda's rule)
        (WARN_RECORD, "WARN"),  # Python's logging spells it WARNING
        (b'{"level": "debug", "msg": "my debug log"}\n', "DEBUG"),  # Lambda's own example, in lower case
        (b'{"level":"CRITICAL"}\n', "FATAL"),
        (b'{"level":"TRACE"}', "TRACE"),
        (b'  {"level":"ERROR"}\r\n', "ERROR"),
        (b'{"level":"LOUD"}\n', "INFO"),  # invalid: INFO
        (b'{"level":40}\n', "INFO"),
        (b'{"msg":"no level"}\n', "INFO"),
        (b'["level","ERROR"]\n', "INFO"),
        (b'{"level":"ERROR"\n', "INFO"),  # not JSON
        (b'{"level":"ERROR","m":"\xff"}\n', "INFO"),  # not UTF-8
        (b'{"level":"ERROR","deep":' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "INFO"),  # too deep, no crash
    ],
)
def test_the_level_lambda_gives_a_line(line: bytes, level: str) -> None:
    assert logs.record_level(line) == level


def test_warn_keeps_warnings_and_drops_info_and_plain_text() -> None:
    f = logs.LevelFilter("WARN")
    assert f.feed(b"printed\n" + INFO_RECORD + WARN_RECORD + b'{"level":"ERROR"}\n') == (
        WARN_RECORD + b'{"level":"ERROR"}\n'
    )


def test_a_line_split_across_reads_is_judged_whole() -> None:
    f = logs.LevelFilter("WARN")
    kept = b""
    for i in range(0, len(WARN_RECORD), 7):  # a record in 7-byte reads: no piece of it is a record
        kept += f.feed(WARN_RECORD[i : i + 7])
    assert kept == WARN_RECORD
    assert f.feed(b'{"level": "ER') == b"" and f.feed(b'ROR"}\nprint') == b'{"level": "ERROR"}\n'
    assert f.flush() == b"", "the unfinished plain line is INFO, dropped at WARN"


def test_an_unfinished_line_is_a_record_of_its_own_when_flushed() -> None:
    f = logs.LevelFilter("INFO")
    assert f.feed(b"no newline yet") == b""
    assert f.flush() == b"no newline yet\n"
    assert f.flush() == b""


def test_a_long_line_is_judged_in_bounded_pieces_never_splitting_a_character() -> None:
    f = logs.LevelFilter("INFO", max_record=9)
    # "é" is two bytes and "€" three: a cut at 9 bytes falls inside a character.
    line = "é" * 20 + "a€" * 5 + "\n"
    kept = f.feed(line.encode())
    pieces = kept.split(b"\n")[:-1]
    assert len(pieces) > 1 and all(len(p) <= 9 for p in pieces)
    assert "".join(p.decode() for p in pieces) == line.rstrip("\n"), "every piece decodes: no character was split"
    # However long the line, the filter holds at most one record of it.
    for _ in range(1000):
        f.feed("é".encode() * 7)
        assert len(f._partial) <= 9


def test_text_and_trace_need_no_filter_json_gets_the_level_or_info() -> None:
    assert logs.application_filter("Text", None) is None
    assert logs.application_filter("JSON", "TRACE") is None
    default = logs.application_filter("JSON", None)
    assert default is not None and default.feed(b'{"level":"DEBUG"}\nprinted\n') == b"printed\n"


class Run:
    """A LogCapture over a real pipe, with the test as the runtime writing into it."""

    def __init__(self, level_filter: logs.LevelFilter | None) -> None:
        self.sunk = bytearray()
        self.loop = asyncio.new_event_loop()
        read_fd, self.write_fd = os.pipe()
        self.capture = logs.LogCapture(read_fd, self.sunk.extend, loop=self.loop, level_filter=level_filter)

    def write(self, data: bytes) -> None:
        os.write(self.write_fd, data)

    def close(self) -> None:
        os.close(self.write_fd)
        self.capture.drain()  # reads EOF and closes
        self.loop.close()


def test_the_capture_forwards_and_keeps_only_kept_lines_in_json_format() -> None:
    run = Run(logs.application_filter("JSON", "WARN"))
    run.capture.note('{"type":"platform.start"}\n')
    run.write(b"printed\n" + INFO_RECORD + WARN_RECORD[:20])
    run.write(WARN_RECORD[20:] + b"unfinished")
    run.capture.note('{"type":"platform.report"}\n')
    log = run.capture.take()
    assert log == b'{"type":"platform.start"}\n' + WARN_RECORD + b'{"type":"platform.report"}\n'
    assert bytes(run.sunk) == log, "what the stream gets is what the tail is made of"
    for line in log.decode().splitlines():
        json.loads(line)
    run.write(b'{"level":"ERROR","message":"after"}')
    run.close()  # the runtime died mid-line: its last line still counts
    assert bytes(run.sunk).endswith(b'{"type":"platform.report"}\n{"level":"ERROR","message":"after"}\n')


def test_an_unfinished_line_never_runs_into_the_agents_line() -> None:
    run = Run(logs.application_filter("JSON", "INFO"))
    run.write(b"partial")
    run.capture.note('{"type":"platform.report"}\n')
    assert run.capture.take() == b'partial\n{"type":"platform.report"}\n'
    run.close()


def test_text_format_passes_bytes_exactly_as_written() -> None:
    run = Run(logs.application_filter("Text", None))
    run.write(b"no newline \xff")
    run.capture.note("END RequestId: r\n")
    run.write(b'{"level":"DEBUG"}\n')
    assert run.capture.take() == b'no newline \xffEND RequestId: r\n{"level":"DEBUG"}\n'
    run.close()
