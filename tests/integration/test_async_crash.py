"""Crash safety: a gateway killed with SIGKILL while 2,000 acknowledged events are queued or in flight delivers every
one of them after it is restarted (at-least-once: duplicates are counted and reported, losses are failures)."""

from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import Gateway, NatsServer, wait_until
from tests.integration.test_async import FAST_RETRIES, lambda_client, write_functions
from tests.workdir import WorkDir

EVENTS = 2000


@pytest.mark.parametrize("backend", ["sqlite", "nats"])
def test_sigkill_loses_no_acknowledged_event(backend: str, tmp_path: Path, record_property) -> None:  # type: ignore[no-untyped-def]
    work = WorkDir(tmp_path / "work")
    functions = write_functions(tmp_path / "functions", work)
    nats = NatsServer(tmp_path / "nats") if backend == "nats" else None
    extra = ("--queue", "nats", "--nats-url", nats.url) if nats else ()
    data = tmp_path / "data"
    try:
        first = Gateway(functions, data, *FAST_RETRIES, *extra)
        client = lambda_client(first.url)

        def send(i: int) -> str:
            response = client.invoke(FunctionName="recorder", InvocationType="Event", Payload=json.dumps({"i": i}))
            assert response["StatusCode"] == 202
            return str(response["ResponseMetadata"]["RequestId"])

        with ThreadPoolExecutor(16) as pool:
            acknowledged = list(pool.map(send, range(EVENTS)))
        record = work.directory / "recorder.log"
        delivered_before = len(record.read_text().splitlines()) if record.exists() else 0
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
        first.stop()
        assert delivered_before < EVENTS, "every event was delivered before the kill: the test proves nothing"

        second = Gateway(functions, data, *FAST_RETRIES, *extra)
        try:
            assert wait_until(lambda: set(acknowledged) <= set(record.read_text().splitlines()), timeout=180), (
                f"lost: {len(set(acknowledged) - set(record.read_text().splitlines()))}"
            )
        finally:
            second.stop()
        lines = record.read_text().splitlines()
        duplicates = len(lines) - len(set(lines))
        record_property("delivered_before_kill", delivered_before)
        record_property("duplicates", duplicates)
        print(f"\n[{backend}] {EVENTS} acknowledged, {delivered_before} delivered before SIGKILL, "
              f"0 lost, {duplicates} delivered twice")  # fmt: skip
    finally:
        work.stop()
        if nats:
            nats.stop()
