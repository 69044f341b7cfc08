"""The embedded event queue: one SQLite database in WAL mode under the gateway's data directory.

Writes happen on the event loop (each is tens of microseconds) with group commit: enqueues that arrive together are
committed in one transaction and all acknowledged after it. With `synchronous=NORMAL` a committed event survives the
gateway being killed (it is in the OS's page cache); `synchronous=FULL` also survives power loss, at the cost of an
fsync per commit. One gateway owns the file: events it had leased when it died are due again when it restarts.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from ..queueing import (
    DEAD_LETTERED,
    FAILED,
    QUEUED,
    RETRYING,
    RUNNING,
    DeadLetter,
    Event,
    FunctionQueueStats,
    QueueStats,
    Status,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    request_id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    qualifier TEXT,
    payload BLOB NOT NULL,
    enqueued_at REAL NOT NULL,
    not_before REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    throttles INTEGER NOT NULL DEFAULT 0,
    trace_id TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    executed_version TEXT,
    result TEXT,
    error TEXT,
    error_type TEXT,
    condition TEXT
);
CREATE INDEX IF NOT EXISTS events_due ON events (not_before) WHERE state IN ('queued', 'retrying');
CREATE INDEX IF NOT EXISTS events_finished ON events (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS dead_letters (
    request_id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    qualifier TEXT,
    payload BLOB NOT NULL,
    condition TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    enqueued_at REAL NOT NULL,
    failed_at REAL NOT NULL,
    executed_version TEXT,
    error_type TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS dead_by_function ON dead_letters (function, request_id);
"""
WAITING = (QUEUED, RETRYING)
EVENT_COLUMNS = (
    "request_id, function, qualifier, payload, enqueued_at, not_before, attempts, retries, throttles, trace_id"
)
DEAD_COLUMNS = (
    "request_id, function, qualifier, payload, condition, attempts, enqueued_at, failed_at, executed_version, "
    "error_type, error"
)


class SQLiteQueue:
    blocking_claim = False

    def __init__(self, path: Path, *, synchronous: str = "NORMAL") -> None:
        self._path = path
        self._synchronous = synchronous
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[Event, asyncio.Future[None]]] = []

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "queue not open"
        return self._db

    async def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(SCHEMA)
        # Whatever this gateway had leased when it stopped (or died) is due again: at-least-once delivery.
        db.execute(
            "UPDATE events SET state = CASE WHEN retries > 0 THEN ? ELSE ? END WHERE state = ?",
            (RETRYING, QUEUED, RUNNING),
        )
        self._db = db

    async def close(self) -> None:
        if self._pending:
            self._flush()
        if self._db is not None:
            self._db.close()
            self._db = None

    # ---- enqueue with group commit ---------------------------------------------------------------------------

    async def enqueue(self, event: Event) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((event, future))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._flush)
        await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        now = time.time()
        rows = [
            (e.request_id, e.function, e.qualifier, e.payload, e.enqueued_at, e.not_before, e.attempts, e.retries,
             e.throttles, e.trace_id, QUEUED, now)
            for e, _ in batch
        ]  # fmt: skip
        try:
            with self.db:
                self.db.execute("BEGIN")
                self.db.executemany(
                    f"INSERT INTO events ({EVENT_COLUMNS}, state, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows
                )
        except sqlite3.Error as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    # ---- delivery --------------------------------------------------------------------------------------------

    async def claim(self, limit: int, now: float) -> list[Event]:
        if limit <= 0:
            return []
        rows = self.db.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE state IN (?, ?) AND not_before <= ? ORDER BY not_before LIMIT ?",
            (*WAITING, now, limit),
        ).fetchall()
        if not rows:
            return []
        events = [Event(*row) for row in rows]
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "UPDATE events SET state = ?, updated_at = ? WHERE request_id = ?",
                [(RUNNING, now, e.request_id) for e in events],
            )
        return events

    def next_due(self) -> float | None:
        row = self.db.execute("SELECT MIN(not_before) FROM events WHERE state IN (?, ?)", WAITING).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def _write_status(self, event: Event, status: Status, *, finished: bool) -> None:
        self.db.execute(
            "UPDATE events SET state = ?, updated_at = ?, finished_at = ?, not_before = ?, attempts = ?, retries = ?, "
            "throttles = ?, executed_version = ?, result = ?, error = ?, error_type = ?, condition = ? "
            "WHERE request_id = ?",
            (status.state, status.updated_at, status.updated_at if finished else None, event.not_before,
             event.attempts, event.retries, event.throttles, status.executed_version, status.result, status.error,
             status.error_type, status.condition, event.request_id),
        )  # fmt: skip

    async def succeed(self, event: Event, status: Status) -> None:
        self._write_status(event, status, finished=True)

    async def reschedule(self, event: Event, status: Status) -> None:
        self._write_status(event, status, finished=False)

    async def dead_letter(self, event: Event, record: DeadLetter, status: Status) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute(
                f"INSERT OR REPLACE INTO dead_letters ({DEAD_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (record.request_id, record.function, record.qualifier, record.payload, record.condition,
                 record.attempts, record.enqueued_at, record.failed_at, record.executed_version, record.error_type,
                 record.error),
            )  # fmt: skip
            self._write_status(event, status, finished=True)

    # ---- status and the DLQ ----------------------------------------------------------------------------------

    async def status(self, request_id: str) -> Status | None:
        row = self.db.execute(
            "SELECT request_id, function, qualifier, state, enqueued_at, updated_at, attempts, executed_version, "
            "result, error, error_type, condition FROM events WHERE request_id = ?",
            (request_id,),
        ).fetchone()
        return Status(*row) if row else None

    async def list_dead(
        self, function: str | None, marker: str | None, limit: int
    ) -> tuple[list[DeadLetter], str | None]:
        clauses, params = ["request_id > ?"], [marker or ""]
        if function:
            clauses.append("function = ?")
            params.append(function)
        rows = self.db.execute(
            f"SELECT {DEAD_COLUMNS} FROM dead_letters WHERE {' AND '.join(clauses)} ORDER BY request_id LIMIT ?",
            (*params, limit + 1),
        ).fetchall()
        page = [DeadLetter(*row) for row in rows[:limit]]
        return page, (page[-1].request_id if len(rows) > limit else None)

    async def get_dead(self, request_id: str) -> DeadLetter | None:
        row = self.db.execute(f"SELECT {DEAD_COLUMNS} FROM dead_letters WHERE request_id = ?", (request_id,)).fetchone()
        return DeadLetter(*row) if row else None

    async def delete_dead(self, request_id: str) -> bool:
        with self.db:
            self.db.execute("BEGIN")
            deleted = self.db.execute("DELETE FROM dead_letters WHERE request_id = ?", (request_id,)).rowcount
            self.db.execute(
                "UPDATE events SET state = ? WHERE request_id = ? AND state = ?", (FAILED, request_id, DEAD_LETTERED)
            )
        return deleted > 0

    async def redrive(self, request_id: str, now: float) -> bool:
        dead = await self.get_dead(request_id)
        if dead is None:
            return False
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM events WHERE request_id = ?", (request_id,))
            self.db.execute(
                f"INSERT INTO events ({EVENT_COLUMNS}, state, updated_at) VALUES (?,?,?,?,?,?,0,0,0,'',?,?)",
                (dead.request_id, dead.function, dead.qualifier, dead.payload, now, now, QUEUED, now),
            )
            self.db.execute("DELETE FROM dead_letters WHERE request_id = ?", (request_id,))
        return True

    async def stats(self) -> QueueStats:
        stats = QueueStats()
        for function, depth, oldest in self.db.execute(
            "SELECT function, COUNT(*), MIN(enqueued_at) FROM events WHERE state IN (?, ?, ?) GROUP BY function",
            (*WAITING, RUNNING),
        ):
            stats.functions[function] = FunctionQueueStats(depth, oldest)
        stats.dead_letters = self.db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
        return stats

    async def purge(self, finished_before: float) -> int:
        return self.db.execute("DELETE FROM events WHERE finished_at < ?", (finished_before,)).rowcount
