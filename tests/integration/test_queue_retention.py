"""Retention of async invocation statuses on both queue backends: the real SQLite queue on a real file, and the
JetStream queue against a real nats-server. Old and excess statuses of finished events go, oldest first; the newest
stay queryable, and no waiting event, running event or dead letter is ever lost to it."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kambda.gateway.queueing import DEAD_LETTERED, QUEUED, RUNNING, SUCCEEDED, DeadLetter, Event, EventQueue, Status
from kambda.gateway.queues.jetstream import STATUS_BUCKET, JetStreamQueue
from kambda.gateway.queues.sqlite import SQLiteQueue
from kambda.gateway.retention import Retention
from tests.conftest import NatsServer

MB = 1024 * 1024
DAY = 24 * 3600.0
HOUR = 3600.0
LATER = 3600.0  # waiting events are due this far in the future, so only the test's own claims take them


@dataclass
class Backend:
    name: str
    queue: EventQueue
    data: list[Path]  # where the statuses live on disk
    log: list[Path]  # and what is written ahead of them (SQLite's WAL: bounded by checkpoints, not by retention)
    # nats-server's file store appends to blocks (~4 MiB each for this bucket, measured with 2.9) and deletes a
    # block only once all its messages are gone, so its files run up to a block past what counts against max_bytes.
    granularity: int = 0

    def stored(self) -> tuple[int, int]:
        return size(self.data), size(self.log)


def size(paths: list[Path]) -> int:
    files = [f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
    return sum(f.stat().st_size for f in files)


@pytest.fixture(params=["sqlite", "nats"])
def backend_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def nats_server(backend_name: str, tmp_path: Path) -> Iterator[NatsServer | None]:
    if backend_name != "nats":
        yield None
        return
    server = NatsServer(tmp_path / "nats")
    yield server
    server.stop()


@pytest.fixture
async def opener(backend_name: str, nats_server: NatsServer | None, tmp_path: Path) -> AsyncIterator[Any]:
    """Opens the backend's queue with a retention (as the gateway does: JetStream gets it at open)."""
    opened: list[EventQueue] = []

    async def open_backend(retention: Retention) -> Backend:
        queue: EventQueue
        if nats_server is None:
            path = tmp_path / "data" / "queue.db"
            queue = SQLiteQueue(path)
            data, log = [path], [path.with_name("queue.db-wal"), path.with_name("queue.db-shm")]
        else:
            queue = JetStreamQueue(
                nats_server.url, status_retention=retention.max_age, status_max_bytes=retention.max_bytes
            )
            data, log = [tmp_path / "nats" / "store" / "jetstream" / "$G" / "streams" / f"KV_{STATUS_BUCKET}"], []
        await queue.open()
        opened.append(queue)
        return Backend(backend_name, queue, data, log, granularity=4 * MB if nats_server else 0)

    yield open_backend
    for queue in opened:  # closing twice is harmless; this is for tests that failed half-way
        await queue.close()


def new_event(function: str, now: float, *, due: float = 0.0, size: int = 16) -> Event:
    return Event(str(uuid.uuid4()), function, None, b'{"pad": "' + b"p" * size + b'"}', now, not_before=due)


async def claim_exactly(queue: EventQueue, ids: set[str], now: float, timeout: float = 30) -> list[Event]:
    """Claim until every event in `ids` is leased (and nothing else: the rest is due later)."""
    claimed: list[Event] = []
    deadline = time.monotonic() + timeout
    while len(claimed) < len(ids):
        assert time.monotonic() < deadline, f"claimed {len(claimed)} of {len(ids)}"
        batch = await queue.claim(min(256, len(ids) - len(claimed)), now)
        assert {e.request_id for e in batch} <= ids, "claimed an event that is not due"
        claimed += batch
    return claimed


def finished(event: Event, state: str, at: float, result: str | None = None) -> Status:
    return Status(event.request_id, event.function, None, state, event.enqueued_at, at, 1, "$LATEST", result)


async def finish_many(queue: EventQueue, n: int, now: float, result_size: int, *, at: float | None = None) -> list[str]:
    """n events through the whole life of a successful one: enqueued, claimed, succeeded with a result."""
    events = [new_event("flood", now) for _ in range(n)]
    await asyncio.gather(*(queue.enqueue(e) for e in events))
    claimed = await claim_exactly(queue, {e.request_id for e in events}, now)
    await asyncio.gather(
        *(queue.succeed(e, finished(e, SUCCEEDED, at or now, f"{e.request_id}:" + "r" * result_size)) for e in claimed)
    )
    return [e.request_id for e in events]


@dataclass
class Keepers:
    """What retention must never take: events waiting, events being delivered, dead letters."""

    waiting: list[str]
    running: list[Event]
    dead: list[str]


async def add_keepers(queue: EventQueue, now: float, *, at: float) -> Keepers:
    waiting = [new_event("waiting", at, due=now + LATER) for _ in range(30)]
    running = [new_event("running", at) for _ in range(10)]
    doomed = [new_event("doomed", at, size=2000) for _ in range(20)]
    await asyncio.gather(*(queue.enqueue(e) for e in [*waiting, *running, *doomed]))
    claimed = await claim_exactly(queue, {e.request_id for e in [*running, *doomed]}, now)
    for event in claimed:
        if event.function == "doomed":
            record = DeadLetter(
                event.request_id, event.function, None, event.payload, "RetriesExhausted", 1, event.enqueued_at, at
            )
            await queue.dead_letter(event, record, finished(event, DEAD_LETTERED, at))
    return Keepers([e.request_id for e in waiting], [e for e in claimed if e.function == "running"],
                   [e.request_id for e in doomed])  # fmt: skip


async def assert_nothing_lost(backend: Backend, keepers: Keepers, now: float) -> None:
    queue = backend.queue
    # Every dead letter, payload and all.
    page, _ = await queue.list_dead("doomed", None, 1000)
    assert sorted(d.request_id for d in page) == sorted(keepers.dead)
    assert all(d.payload.startswith(b'{"pad": "pp') for d in page)
    # Every waiting event is still queued, and is delivered once due.
    stats = await queue.stats()
    assert stats.functions["waiting"].depth == len(keepers.waiting)
    if backend.name == "sqlite":
        # SQLite keeps their statuses too (JetStream may drop a status nobody rewrote for the bucket's whole
        # turnover; the event itself is in the work queue, and its next state writes the status again).
        for request_id in keepers.waiting:
            status = await queue.status(request_id)
            assert status is not None and status.state == QUEUED
        for event in keepers.running:
            status = await queue.status(event.request_id)
            assert status is not None and status.state == RUNNING
        later = await claim_exactly(queue, set(keepers.waiting), now + LATER + 1)
        assert sorted(e.request_id for e in later) == sorted(keepers.waiting)
    # The events being delivered can still be finished (their leases were not taken away).
    for event in keepers.running:
        await queue.succeed(event, finished(event, SUCCEEDED, time.time(), "late"))
        status = await queue.status(event.request_id)
        assert status is not None and status.state == SUCCEEDED and status.result == "late"


async def test_age_retention_forgets_old_finished_statuses_only(opener: Any, backend_name: str) -> None:
    now = time.time()
    if backend_name == "sqlite":
        backend = await opener(Retention(HOUR, 256 * MB))
        # Finished two hours ago by their own timestamps; the queue purges by the time it is told.
        old = await finish_many(backend.queue, 200, now, 100, at=now - 2 * HOUR)
        keepers = await add_keepers(backend.queue, now, at=now - 2 * HOUR)
        recent = await finish_many(backend.queue, 50, now, 100)
        removed = await backend.queue.purge(Retention(HOUR, 256 * MB), now)
        assert removed == 200 + len(keepers.dead)  # the dead letters' statuses are finished statuses too
    else:
        # JetStream's server expires statuses itself (the bucket's max_age): a short one, and real time passing.
        backend = await opener(Retention(2.0, 256 * MB))
        old = await finish_many(backend.queue, 200, now, 100)
        keepers = await add_keepers(backend.queue, now, at=now)
        deadline = time.monotonic() + 20
        while await backend.queue.status(old[-1]) is not None:
            assert time.monotonic() < deadline, "statuses older than max_age were not expired"
            await asyncio.sleep(0.2)
        recent = await finish_many(backend.queue, 50, time.time(), 100)
        assert await backend.queue.purge(Retention(2.0, 256 * MB), time.time()) == 0
    for request_id in old:
        assert await backend.queue.status(request_id) is None
    for request_id in recent:
        status = await backend.queue.status(request_id)
        assert status is not None and status.state == SUCCEEDED and status.result == f"{request_id}:" + "r" * 100
    await assert_nothing_lost(backend, keepers, now)
    await backend.queue.close()


async def test_size_budget_holds_and_keeps_the_newest(opener: Any, backend_name: str) -> None:
    budget = MB
    backend = await opener(Retention(DAY, budget))
    now = time.time()
    keepers = await add_keepers(backend.queue, now, at=now)  # the oldest data of all
    written: list[str] = []
    result_size = 4000
    peak_data = peak_log = 0
    for _ in range(20):  # 16 MB of statuses
        written += await finish_many(backend.queue, 200, now, result_size)
        await backend.queue.purge(Retention(DAY, budget), now)  # the deliverer does this every second
        data, log = backend.stored()
        peak_data, peak_log = max(peak_data, data), max(peak_log, log)
        if isinstance(backend.queue, JetStreamQueue):  # what the server holds against max_bytes
            info = await backend.queue.js.stream_info(f"KV_{STATUS_BUCKET}")
            assert info.state.bytes <= budget
    # Statuses were written at 16 times the budget; what is stored stays near it. The margin: SQLite's estimate per
    # row is within ~20 % of the pages it takes; the waiting events and dead letters; JetStream's last block.
    assert len(written) * result_size > 15 * budget
    allowed = 1.4 * budget + 256 * 1024 + backend.granularity
    assert peak_data < allowed, f"{backend_name}: {peak_data} bytes stored for a budget of {budget}"
    # SQLite's WAL is bounded by its checkpoints (1,000 pages, then cut back to WAL_SIZE_LIMIT), whatever the budget.
    assert peak_log < 4 * MB + 512 * 1024
    # The newest are all still there, complete; the oldest were the ones to go.
    for request_id in written[-200:]:
        status = await backend.queue.status(request_id)
        assert status is not None and status.result == f"{request_id}:" + "r" * result_size
    assert await backend.queue.status(written[0]) is None
    await assert_nothing_lost(backend, keepers, now)
    await backend.queue.close()


async def test_sqlite_database_from_before_retention_is_upgraded_and_shrinks(tmp_path: Path) -> None:
    """A queue.db written without auto_vacuum (every database before bounded retention) gets it at open."""
    path = tmp_path / "queue.db"
    queue = SQLiteQueue(path)
    await queue.open()
    await queue.close()
    # Rebuild it the way the old code did: auto_vacuum off, no usage bookkeeping, finished rows with payloads.
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(
        "DROP TRIGGER status_usage_insert; DROP TRIGGER status_usage_update; DROP TRIGGER status_usage_delete;"
        "DROP TABLE status_usage; PRAGMA auto_vacuum=NONE; VACUUM;"
    )
    now = time.time()
    rows = [
        (str(uuid.uuid4()), "old", b"x" * 500, now, now, "succeeded", now, now - 60 + i / 1000, "r" * 500)
        for i in range(6000)
    ]
    db.executemany(
        "INSERT INTO events (request_id, function, payload, enqueued_at, not_before, state, updated_at, finished_at,"
        " result) VALUES (?,?,?,?,?,?,?,?,?)",
        rows,
    )
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    db.close()
    before = path.stat().st_size
    assert before > 5 * MB

    queue = SQLiteQueue(path)
    await queue.open()
    count, used = queue.usage()
    assert count == 6000 and used > 6000 * 1000  # the existing rows were measured once
    assert queue.db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    await queue.purge(Retention(DAY, MB), now)
    assert path.stat().st_size < 1.4 * MB
    assert await queue.status(rows[-1][0]) is not None  # the newest stay
    assert await queue.status(rows[0][0]) is None
    await queue.close()


async def test_jetstream_bucket_limits_follow_the_retention(tmp_path: Path) -> None:
    """An existing status bucket gets new limits at open, and when the retention handed to purge changes."""
    server = NatsServer(tmp_path / "nats")
    try:
        first = JetStreamQueue(server.url)  # the defaults: 24 h, 256 MiB
        await first.open()
        await first.close()

        async def limits(queue: JetStreamQueue) -> tuple[float | None, int | None, Any]:
            config = (await queue.js.stream_info(f"KV_{STATUS_BUCKET}")).config
            return config.max_age, config.max_bytes, config.discard

        queue = JetStreamQueue(server.url, status_retention=HOUR, status_max_bytes=MB)
        await queue.open()
        from nats.js.api import DiscardPolicy

        assert await limits(queue) == (HOUR, MB, DiscardPolicy.OLD)
        await queue.purge(Retention(30.0, 2 * MB), time.time())
        assert await limits(queue) == (30.0, 2 * MB, DiscardPolicy.OLD)
        await queue.close()
    finally:
        server.stop()
