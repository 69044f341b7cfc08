"""The embedded event queue: one SQLite database in WAL mode under the gateway's data directory.

Writes happen on the event loop (each is tens of microseconds) with group commit: writes that arrive together
(enqueues, status updates) are committed in one transaction and all acknowledged after it. With
`synchronous=NORMAL` a committed event survives the gateway being killed (it is in the OS's page cache);
`synchronous=FULL` also survives power loss, at the cost of an fsync per commit. One gateway owns the file, so
leases are kept in memory only: an event being delivered is still `queued` on disk, and whatever a gateway was
delivering when it died is due again the moment it restarts.

Statuses of finished events are kept within an age and a size (`retention.py`). Their size is kept exact and O(1)
to read by triggers that maintain one row, `status_usage` (count and estimated bytes of finished rows), in the same
transactions as the rows themselves: measuring the database instead (page_count) would count waiting events and
dead letters too, and a `SUM(length(...))` scan at every purge grows with the very data being bounded. A finished
row drops its payload (a dead letter keeps its own copy), the largest part of most rows. New databases use
`auto_vacuum=INCREMENTAL`, so trimmed pages can be returned to the file system.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from .. import retention as limits
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
from ..retention import Retention

log = logging.getLogger(__name__)

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
CREATE TABLE IF NOT EXISTS status_usage (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    rows INTEGER NOT NULL,  -- finished rows in `events`
    bytes INTEGER NOT NULL  -- and their estimated size (row_bytes below)
);
CREATE TRIGGER IF NOT EXISTS status_usage_insert AFTER INSERT ON events WHEN new.finished_at IS NOT NULL BEGIN
    UPDATE status_usage SET rows = rows + 1, bytes = bytes + {new} WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS status_usage_update AFTER UPDATE ON events
WHEN old.finished_at IS NOT NULL OR new.finished_at IS NOT NULL BEGIN
    UPDATE status_usage SET
        rows = rows + (new.finished_at IS NOT NULL) - (old.finished_at IS NOT NULL),
        bytes = bytes + CASE WHEN new.finished_at IS NULL THEN 0 ELSE {new} END
                      - CASE WHEN old.finished_at IS NULL THEN 0 ELSE {old} END
    WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS status_usage_delete AFTER DELETE ON events WHEN old.finished_at IS NOT NULL BEGIN
    UPDATE status_usage SET rows = rows - 1, bytes = bytes - {old} WHERE id = 0;
END;
"""
# What one finished row costs on disk, estimated: its variable-length values (the request id twice, as it is also
# the primary-key index's key) plus what the rest takes — the fixed columns, the record and cell headers, the two
# index entries, and pages that are never quite full. ROW_OVERHEAD was measured: 10,000 rows with short results
# fill ~(ROW_OVERHEAD + values) bytes of pages each. Values that overflow a page waste part of their last page,
# which this does not count; the size bound is an estimate to within that.
ROW_OVERHEAD = 200


def row_bytes(row: str) -> str:
    """SQL for the estimated size of the `events` row named `row` (`new` or `old` in a trigger)."""
    values = ["request_id", "request_id", "function", "qualifier", "payload", "trace_id", "state", "result", "error",
              "error_type", "condition", "executed_version"]  # fmt: skip
    # CAST AS BLOB: length() of text counts characters, the disk holds bytes; NULL counts 0.
    return f"({ROW_OVERHEAD} + " + " + ".join(f"ifnull(length(CAST({row}.{v} AS BLOB)), 0)" for v in values) + ")"


SCHEMA = SCHEMA.format(new=row_bytes("new"), old=row_bytes("old"))
INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL
WAL_SIZE_LIMIT = 4 * 1024 * 1024  # the WAL is cut back to this after a checkpoint (a big purge can swell it)
PURGE_CHUNK = 2000  # rows deleted per statement: a purge of many rows yields to the event loop in between
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
        self._incremental = False  # whether the file can give freed pages back (auto_vacuum=INCREMENTAL)

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "queue not open"
        return self._db

    async def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        if db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0:
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only possible before the first table (or by a VACUUM)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        db.execute("PRAGMA busy_timeout=5000")
        db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        db.executescript(SCHEMA)
        if db.execute("PRAGMA auto_vacuum").fetchone()[0] != INCREMENTAL:
            await asyncio.to_thread(self._enable_incremental_vacuum, db)
        with db:
            db.execute("BEGIN")
            if db.execute("SELECT 1 FROM status_usage").fetchone() is None:  # a new database, or one from before
                db.execute(
                    f"INSERT INTO status_usage SELECT 0, COUNT(*), COALESCE(SUM({row_bytes('e')}), 0) FROM events AS e "
                    "WHERE finished_at IS NOT NULL"
                )
        self._incremental = db.execute("PRAGMA auto_vacuum").fetchone()[0] == INCREMENTAL
        self._db = db

    def _enable_incremental_vacuum(self, db: sqlite3.Connection) -> None:
        """Switch a database created without auto_vacuum (before retention was bounded) to INCREMENTAL.

        That takes a VACUUM, which rewrites the live data once: done at open, before anything uses the queue, and in
        a worker thread so the event loop stays responsive. Without it (e.g. no disk space for the copy) everything
        still works; the file just never shrinks below its high-water mark (freed pages are reused, so it stops
        growing once the size budget holds).
        """
        started, size = time.monotonic(), self._path.stat().st_size
        try:
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            db.execute("VACUUM")
        except sqlite3.Error as exc:
            log.warning("could not switch %s to incremental vacuum (%s); it will not shrink", self._path, exc)
            return
        log.info(
            "compacted %s once to enable incremental vacuum: %.1f -> %.1f MB in %.1f s",
            self._path, size / 1e6, self._path.stat().st_size / 1e6, time.monotonic() - started,
        )  # fmt: skip

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
        # A finished row is only a status: nothing reads its payload again (a dead letter has its own copy).
        payload = "payload = x'', " if finished else ""
        return (
            f"UPDATE events SET {payload}state = ?, updated_at = ?, finished_at = ?, not_before = ?, attempts = ?, "
            "retries = ?, throttles = ?, executed_version = ?, result = ?, error = ?, error_type = ?, condition = ? "
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

    # ---- retention -------------------------------------------------------------------------------------------

    async def purge(self, retention: Retention, now: float) -> int:
        removed = 0
        while (n := self._delete_finished("finished_at < ?", (now - retention.max_age,))) > 0:
            removed += n
            await asyncio.sleep(0)
        while (excess := limits.rows_to_drop(*self.usage(), retention.max_bytes)) > 0:
            # `excess` rows of the average size; measured again after, in case the oldest were smaller.
            while excess > 0 and (n := self._delete_finished("finished_at IS NOT NULL", (), min(excess, PURGE_CHUNK))):
                removed, excess = removed + n, excess - n
                await asyncio.sleep(0)
            if excess > 0:  # nothing left to delete: the usage row is ahead of the table (cannot happen)
                break
        if removed:
            self._reclaim(retention.max_bytes)
        return removed

    def usage(self) -> tuple[int, int]:
        """Finished rows and their estimated bytes (kept by triggers, so reading it costs nothing)."""
        row = self.db.execute("SELECT rows, bytes FROM status_usage WHERE id = 0").fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def _delete_finished(self, where: str, params: tuple[Any, ...], limit: int = PURGE_CHUNK) -> int:
        # Oldest first, through the partial index of finished rows; waiting events (finished_at NULL) never match.
        return self.db.execute(
            f"DELETE FROM events WHERE rowid IN (SELECT rowid FROM events WHERE {where} ORDER BY finished_at LIMIT ?)",
            (*params, limit),
        ).rowcount

    def _reclaim(self, budget: int) -> None:
        """Give the file system back the pages a purge freed beyond the room the next statuses will fill again."""
        if not self._incremental:
            return
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        pages = limits.pages_to_release(free, self.db.execute("PRAGMA page_size").fetchone()[0], budget)
        if pages:
            # executescript: the pragma frees one page per step, and execute() steps a statement without result
            # columns only once.
            self.db.executescript(f"PRAGMA incremental_vacuum({pages});")
            # In WAL mode the file shrinks when the truncation is checkpointed; TRUNCATE also empties the WAL.
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
