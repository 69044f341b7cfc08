"""What happens to an asynchronous event after each attempt (pure): Lambda's retry rules, as data and arithmetic.

- Function errors (unhandled, timeout, crash) are retried up to `maxRetryAttempts` (0-2) times, the n-th retry
  `n * retry_base_delay` after the failure (Lambda: 1 min, then 2 min).
- Throttles and platform errors re-queue the event with exponential backoff (`throttle_base_delay` doubling, at most
  5 min) without using up retries.
- Nothing is attempted once the event is older than `maxEventAgeSeconds`: EventAgeExceeded.
- A function with reserved concurrency 0 fails the event at once: ZeroReservedConcurrency.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Any

from kambda.specs import AsyncConfig

from .queueing import Event

RETRIES_EXHAUSTED = "RetriesExhausted"
EVENT_AGE_EXCEEDED = "EventAgeExceeded"
ZERO_RESERVED_CONCURRENCY = "ZeroReservedConcurrency"
RESOURCE_NOT_FOUND = "ResourceNotFound"
MAX_THROTTLE_DELAY = 300.0


class Result(enum.Enum):
    SUCCESS = "success"
    FUNCTION_ERROR = "function-error"
    THROTTLED = "throttled"
    PLATFORM_ERROR = "platform-error"


@dataclass(frozen=True)
class RetryTiming:
    retry_base_delay: float = 60.0
    throttle_base_delay: float = 1.0


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class Retry:
    not_before: float
    counts_as_retry: bool


@dataclass(frozen=True)
class Fail:
    condition: str


Step = Done | Retry | Fail


def before_attempt(event: Event, config: AsyncConfig, reserved: int | None, now: float) -> Fail | None:
    """Checks made before an event is handed to the function."""
    if reserved == 0:
        return Fail(ZERO_RESERVED_CONCURRENCY)
    if now - event.enqueued_at >= config.max_event_age_seconds:
        return Fail(EVENT_AGE_EXCEEDED)
    return None


def after_attempt(event: Event, result: Result, config: AsyncConfig, timing: RetryTiming, now: float) -> Step:
    if result is Result.SUCCESS:
        return Done()
    expires = event.enqueued_at + config.max_event_age_seconds
    if result is Result.FUNCTION_ERROR:
        if event.retries >= config.max_retry_attempts:
            return Fail(RETRIES_EXHAUSTED)
        at = now + timing.retry_base_delay * (event.retries + 1)
        return Retry(at, counts_as_retry=True) if at < expires else Fail(EVENT_AGE_EXCEEDED)
    delay = min(timing.throttle_base_delay * 2**event.throttles, MAX_THROTTLE_DELAY)
    # Keep trying until the age limit itself, then let `before_attempt` declare the event too old.
    return Retry(min(now + delay, expires), counts_as_retry=False)


def apply(event: Event, step: Retry) -> None:
    event.not_before = step.not_before
    if step.counts_as_retry:
        event.retries += 1
        event.throttles = 0
    else:
        event.throttles += 1


def destination_record(
    *,
    event: Event,
    function_arn: str,
    condition: str,
    executed_version: str | None,
    function_error: str | None,
    response: Any,
    now: float | None = None,
) -> dict[str, Any]:
    """Lambda's destination record (invocation-async: "Lambda Function Invocation Result")."""
    stamp = time.gmtime(now if now is not None else time.time())
    millis = int(((now if now is not None else time.time()) % 1) * 1000)
    record: dict[str, Any] = {
        "version": "1.0",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", stamp) + f".{millis:03d}Z",
        "requestContext": {
            "requestId": event.request_id,
            "functionArn": function_arn,
            "condition": condition,
            # ZeroReservedConcurrency never invoked the function: Lambda counts only the retries so far.
            "approximateInvokeCount": event.attempts,
        },
        "requestPayload": _json_or_text(event.payload),
    }
    if condition != ZERO_RESERVED_CONCURRENCY and executed_version is not None:
        context: dict[str, Any] = {"statusCode": 200, "executedVersion": executed_version}
        if function_error:
            context["functionError"] = function_error
        record["responseContext"] = context
        record["responsePayload"] = response
    return record


def _json_or_text(raw: bytes) -> Any:
    import json

    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")
