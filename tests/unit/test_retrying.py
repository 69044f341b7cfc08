"""Lambda's async retry rules, with time passed in as a value."""

from __future__ import annotations

import pytest

from kambda.gateway import retrying
from kambda.gateway.queueing import Event
from kambda.gateway.retrying import Done, Fail, Result, Retry, RetryTiming, after_attempt, before_attempt
from kambda.specs import AsyncConfig

T0 = 1_000_000.0
LAMBDA = RetryTiming()  # 60 s base, 1 s throttle backoff


def event(**kw: float) -> Event:
    e = Event("r", "f", None, b"{}", enqueued_at=T0)
    for key, value in kw.items():
        setattr(e, key, value)
    return e


def test_success_is_done() -> None:
    assert after_attempt(event(), Result.SUCCESS, AsyncConfig(), LAMBDA, T0) == Done()


def test_function_errors_retry_after_one_then_two_minutes_then_fail() -> None:
    e, config = event(), AsyncConfig(max_retry_attempts=2)
    first = after_attempt(e, Result.FUNCTION_ERROR, config, LAMBDA, T0)
    assert first == Retry(T0 + 60, counts_as_retry=True)
    retrying.apply(e, first)
    second = after_attempt(e, Result.FUNCTION_ERROR, config, LAMBDA, T0 + 61)
    assert second == Retry(T0 + 61 + 120, counts_as_retry=True)
    retrying.apply(e, second)
    assert after_attempt(e, Result.FUNCTION_ERROR, config, LAMBDA, T0 + 200) == Fail("RetriesExhausted")


def test_zero_retries_fails_at_once() -> None:
    assert after_attempt(event(), Result.FUNCTION_ERROR, AsyncConfig(max_retry_attempts=0), LAMBDA, T0) == Fail(
        "RetriesExhausted"
    )


def test_a_retry_past_the_maximum_age_is_an_age_failure() -> None:
    config = AsyncConfig(max_retry_attempts=2, max_event_age_seconds=60)
    assert after_attempt(event(), Result.FUNCTION_ERROR, config, LAMBDA, T0 + 10) == Fail("EventAgeExceeded")


@pytest.mark.parametrize("result", [Result.THROTTLED, Result.PLATFORM_ERROR])
def test_throttles_back_off_exponentially_without_using_retries(result: Result) -> None:
    e, config = event(), AsyncConfig()
    delays = []
    now = T0
    for _ in range(12):
        step = after_attempt(e, result, config, LAMBDA, now)
        assert isinstance(step, Retry) and not step.counts_as_retry
        delays.append(step.not_before - now)
        retrying.apply(e, step)
        now = step.not_before
    assert delays[:9] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert delays[9:] == [300, 300, 300]
    assert e.retries == 0


def test_throttle_backoff_stops_at_the_age_limit_and_then_fails() -> None:
    config = AsyncConfig(max_event_age_seconds=60)
    step = after_attempt(event(throttles=6), Result.THROTTLED, config, LAMBDA, T0 + 40)
    assert step == Retry(T0 + 60, counts_as_retry=False)
    assert before_attempt(event(), config, None, T0 + 60) == Fail("EventAgeExceeded")
    assert before_attempt(event(), config, None, T0 + 59) is None


def test_zero_reserved_concurrency() -> None:
    assert before_attempt(event(), AsyncConfig(), 0, T0) == Fail("ZeroReservedConcurrency")


def test_destination_records() -> None:
    e = event(attempts=3)
    e.payload = b'{"a": 1}'
    failure = retrying.destination_record(
        event=e, function_arn="arn:f", condition="RetriesExhausted", executed_version="$LATEST",
        function_error="Unhandled", response={"errorMessage": "x"}, now=T0,
    )  # fmt: skip
    assert failure["version"] == "1.0" and failure["timestamp"] == "1970-01-12T13:46:40.000Z"
    assert failure["requestContext"] == {
        "requestId": "r", "functionArn": "arn:f", "condition": "RetriesExhausted", "approximateInvokeCount": 3,
    }  # fmt: skip
    assert failure["requestPayload"] == {"a": 1}
    assert failure["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"}
    zero = retrying.destination_record(
        event=event(), function_arn="arn:f", condition="ZeroReservedConcurrency", executed_version=None,
        function_error=None, response=None, now=T0,
    )  # fmt: skip
    assert "responseContext" not in zero and "responsePayload" not in zero
