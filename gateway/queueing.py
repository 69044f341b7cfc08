"""Asynchronous invocations at rest: the event, its status and its dead-letter record, and the queue interface.

Two implementations sit behind `EventQueue` and pass one test suite: `queues.sqlite` (WAL, the embedded default)
and `queues.jetstream` (NATS JetStream, for a gateway that runs as several replicas). An event is acknowledged to
its caller only after `enqueue` returns, i.e. once it is durable. Delivery is at-least-once: an event leased by a
gateway that dies is delivered again after the lease expires.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from .retention import Retention

QUEUED, RUNNING, RETRYING, SUCCEEDED, FAILED, DEAD_LETTERED = (
    "queued", "running", "retrying", "succeeded", "failed", "dead-lettered",
)  # fmt: skip
TERMINAL = (SUCCEEDED, FAILED, DEAD_LETTERED)


@dataclass
class Event:
    request_id: str
    function: str  # the function's name in the gateway's namespace
    qualifier: str | None
    payload: bytes
    enqueued_at: float  # epoch seconds: ages must survive restarts
    not_before: float = 0.0  # epoch seconds; 0: due now
    attempts: int = 0  # times the function was actually invoked (Lambda's approximateInvokeCount)
    retries: int = 0  # function-error retries used (bounded by maxRetryAttempts)
    throttles: int = 0  # consecutive throttle / platform-error re-queues (drives the backoff)
    trace_id: str = ""


@dataclass
class Status:
    """What `GET /v1/invocations/{requestId}` answers."""

    request_id: str
    function: str
    qualifier: str | None
    state: str
    enqueued_at: float
    updated_at: float
    attempts: int = 0
    executed_version: str | None = None
    result: str | None = None  # the function's response (text), on success
    error: str | None = None  # the last error payload (text)
    error_type: str | None = None
    condition: str | None = None  # why it was dead-lettered

    def to_json(self) -> dict[str, Any]:
        return {
            "RequestId": self.request_id,
            "FunctionName": self.function,
            "Qualifier": self.qualifier,
            "State": self.state,
            "Attempts": self.attempts,
            "EnqueuedAt": self.enqueued_at,
            "UpdatedAt": self.updated_at,
            "ExecutedVersion": self.executed_version,
            "Result": self.result,
            "ErrorType": self.error_type,
            "Error": self.error,
            "Condition": self.condition,
        }


@dataclass
class DeadLetter:
    """A terminally failed event: everything needed to inspect it and to redrive it."""

    request_id: str
    function: str
    qualifier: str | None
    payload: bytes
    condition: str  # RetriesExhausted | EventAgeExceeded | ZeroReservedConcurrency | ResourceNotFound
    attempts: int
    enqueued_at: float
    failed_at: float
    executed_version: str | None = None
    error_type: str | None = None
    error: str | None = None

    def to_json(self, *, with_payload: bool = True) -> dict[str, Any]:
        data = {
            "RequestId": self.request_id,
            "FunctionName": self.function,
            "Qualifier": self.qualifier,
            "Condition": self.condition,
            "Attempts": self.attempts,
            "EnqueuedAt": self.enqueued_at,
            "FailedAt": self.failed_at,
            "ExecutedVersion": self.executed_version,
            "ErrorType": self.error_type,
            "Error": self.error,
        }
        if with_payload:
            data["Payload"] = self.payload.decode(errors="replace")
        return data


@dataclass
class FunctionQueueStats:
    depth: int = 0  # events waiting (queued or retrying)
    oldest_enqueued_at: float | None = None


@dataclass
class QueueStats:
    functions: dict[str, FunctionQueueStats] = field(default_factory=dict)
    dead_letters: int = 0


def encode(obj: Any) -> bytes:
    """Dataclass → JSON bytes (payloads as text, which events always are: they were validated as JSON)."""
    data = asdict(obj)
    if isinstance(data.get("payload"), bytes):
        data["payload"] = data["payload"].decode()
    return json.dumps(data, separators=(",", ":")).encode()


def decode_event(raw: bytes) -> Event:
    data = json.loads(raw)
    data["payload"] = data["payload"].encode()
    return Event(**data)


class EventQueue(Protocol):
    # Whether `claim` itself waits a little for new events when none are due (then the deliverer need not sleep).
    blocking_claim: bool

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def enqueue(self, event: Event) -> None:
        """Store the event durably (and its status, `queued`); returns once it would survive a crash."""
        ...

    async def claim(self, limit: int, now: float) -> list[Event]:
        """Lease up to `limit` due events to this gateway (marked `running`)."""
        ...

    def next_due(self) -> float | None:
        """Epoch time the earliest not-yet-due event becomes due, if known (lets the deliverer sleep exactly)."""
        ...

    async def succeed(self, event: Event, status: Status) -> None: ...

    async def reschedule(self, event: Event, status: Status) -> None:
        """Release the lease; the event is due again at `event.not_before` with its updated counters."""
        ...

    async def dead_letter(self, event: Event, record: DeadLetter, status: Status) -> None: ...

    async def status(self, request_id: str) -> Status | None: ...

    async def list_dead(
        self, function: str | None, marker: str | None, limit: int
    ) -> tuple[list[DeadLetter], str | None]:
        """Dead letters ordered by request id after `marker`; returns the page and the next marker."""
        ...

    async def get_dead(self, request_id: str) -> DeadLetter | None: ...

    async def delete_dead(self, request_id: str) -> bool: ...

    async def redrive(self, request_id: str, now: float) -> bool:
        """Put a dead letter back on the queue with fresh counters and a fresh age."""
        ...

    async def stats(self) -> QueueStats: ...

    async def purge(self, retention: Retention, now: float) -> int:
        """Forget statuses of finished events past `retention` (age and size, oldest first); run periodically.

        Never touches a waiting or running event or a dead letter. Returns how many statuses it removed itself
        (a backend whose server enforces the limits returns 0).
        """
        ...
