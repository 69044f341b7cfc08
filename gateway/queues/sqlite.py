"""The embedded event queue: one SQLite database in WAL mode under the gateway's data directory.

Writes happen on the event loop (each is tens of microseconds) with group commit: writes that arrive together
(enqueues, status updates) are committed in one transaction and all acknowledged after it. With
`synchronous=NORMAL` a committed event survives the gateway being killed (it is in the OS's page cache);
`synchronous=FULL` also survives power loss, at the cost of an fsync per commit. One gateway owns the file, so
leases are kept in memory only: an event being delivered is still `queued` on disk, and whatever a gateway was
delivering when it died is due again the moment it restarts.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

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
# Spelled out (not bound) so SQLite can use the partial index `events_due`, whose WHERE clause is the same text.
IS_WAITING = "state IN ('queued', 'retrying')"
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
        self._pending: list[tuple[list[tuple[str, tuple[Any, ...]]], asyncio.Future[None]]] = []
        self._leased: set[str] = set()  # request ids being delivered by this gateway

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
        self._db = db

    async def close(self) -> None:
        if self._pending:
            self._flush()
        if self._db is not None:
            self._db.close()
            self._db = None

    # ---- writes, with group commit --------------------------------------------------------------------------

    async def _write(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        """Run the statements in the next transaction; returns once it is committed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((list(statements), future))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._flush)
        await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            with self.db:
                self.db.execute("BEGIN")
                for statements, _ in batch:
                    for sql, params in statements:
                        self.db.execute(sql, params)
        except sqlite3.Error as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    async def enqueue(self, event: Event) -> None:
        e = event
        await self._write(
            (
                f"INSERT INTO events ({EVENT_COLUMNS}, state, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (e.request_id, e.function, e.qualifier, e.payload, e.enqueued_at, e.not_before, e.attempts,
                 e.retries, e.throttles, e.trace_id, QUEUED, time.time()),
            )
        )  # fmt: skip

    # ---- delivery --------------------------------------------------------------------------------------------

    async def claim(self, limit: int, now: float) -> list[Event]:
        if limit <= 0:
            return []
        rows = self.db.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE {IS_WAITING} AND not_before <= ? ORDER BY not_before LIMIT ?",
            (now, limit + len(self._leased)),
        ).fetchall()
        events = [Event(*row) for row in rows if row[0] not in self._leased][:limit]
        self._leased.update(e.request_id for e in events)
        return events

    def next_due(self) -> float | None:
        if self._leased:  # leased events are still "waiting" on disk; look past them
            marks = ",".join("?" * len(self._leased))
            row = self.db.execute(
                f"SELECT MIN(not_before) FROM events WHERE {IS_WAITING} AND request_id NOT IN ({marks})",
                tuple(self._leased),
            ).fetchone()
        else:
            row = self.db.execute(f"SELECT MIN(not_before) FROM events WHERE {IS_WAITING}").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    @staticmethod
    def _status_update(event: Event, status: Status, *, finished: bool) -> tuple[str, tuple[Any, ...]]:
        return (
            "UPDATE events SET state = ?, updated_at = ?, finished_at = ?, not_before = ?, attempts = ?, retries = ?, "
            "throttles = ?, executed_version = ?, result = ?, error = ?, error_type = ?, condition = ? "
            "WHERE request_id = ?",
            (status.state, status.updated_at, status.updated_at if finished else None, event.not_before,
             event.attempts, event.retries, event.throttles, status.executed_version, status.result, status.error,
             status.error_type, status.condition, event.request_id),
        )  # fmt: skip

    async def succeed(self, event: Event, status: Status) -> None:
        await self._write(self._status_update(event, status, finished=True))
        self._leased.discard(event.request_id)

    async def reschedule(self, event: Event, status: Status) -> None:
        await self._write(self._status_update(event, status, finished=False))
        self._leased.discard(event.request_id)

    async def dead_letter(self, event: Event, record: DeadLetter, status: Status) -> None:
        r = record
        await self._write(
            (
                f"INSERT OR REPLACE INTO dead_letters ({DEAD_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (r.request_id, r.function, r.qualifier, r.payload, r.condition, r.attempts, r.enqueued_at,
                 r.failed_at, r.executed_version, r.error_type, r.error),
            ),
            self._status_update(event, status, finished=True),
        )  # fmt: skip
        self._leased.discard(event.request_id)

    # ---- status and the DLQ ----------------------------------------------------------------------------------

    async def status(self, request_id: str) -> Status | None:
        row = self.db.execute(
            "SELECT request_id, function, qualifier, state, enqueued_at, updated_at, attempts, executed_version, "
            "result, error, error_type, condition FROM events WHERE request_id = ?",
            (request_id,),
        ).fetchone()
        if row is None:
            return None
        status = Status(*row)
        if request_id in self._leased:
            status.state = RUNNING
        return status

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
        if await self.get_dead(request_id) is None:
            return False
        await self._write(
            ("DELETE FROM dead_letters WHERE request_id = ?", (request_id,)),
            ("UPDATE events SET state = ? WHERE request_id = ? AND state = ?", (FAILED, request_id, DEAD_LETTERED)),
        )
        return True

    async def redrive(self, request_id: str, now: float) -> bool:
        dead = await self.get_dead(request_id)
        if dead is None:
            return False
        await self._write(
            ("DELETE FROM events WHERE request_id = ?", (request_id,)),
            (
                f"INSERT INTO events ({EVENT_COLUMNS}, state, updated_at) VALUES (?,?,?,?,?,?,0,0,0,'',?,?)",
                (dead.request_id, dead.function, dead.qualifier, dead.payload, now, now, QUEUED, now),
            ),
            ("DELETE FROM dead_letters WHERE request_id = ?", (request_id,)),
        )
        return True

    async def stats(self) -> QueueStats:
        stats = QueueStats()
        for function, depth, oldest in self.db.execute(
            f"SELECT function, COUNT(*), MIN(enqueued_at) FROM events WHERE {IS_WAITING} GROUP BY function"
        ):
            stats.functions[function] = FunctionQueueStats(depth, oldest)
        stats.dead_letters = self.db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
        return stats

    async def purge(self, finished_before: float) -> int:
        return self.db.execute("DELETE FROM events WHERE finished_at < ?", (finished_before,)).rowcount
