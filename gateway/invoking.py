"""Running one invocation on this gateway's instances: admission (Lambda's concurrency limits), dispatch, and the
record of what happened. Shared by sync calls, async delivery and work forwarded by other replicas, so the limits
are counted once, where the function's instances are (its owner, `placement.py`)."""

from __future__ import annotations

from .admission import Admission
from .dispatching import Dispatcher, Invocation, Outcome
from .metrics import Metrics
from .registry import FunctionVersion


class Throttled(Exception):
    """A concurrency limit is reached; `reason` is Lambda's Reason for the 429."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Invoker:
    def __init__(self, dispatcher: Dispatcher, metrics: Metrics, admission: Admission) -> None:
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._admission = admission

    async def run(self, version: FunctionVersion, invocation: Invocation) -> Outcome:
        """Admit, dispatch and wait for the outcome. Raises `Throttled` at a limit, and `dispatching.NoInstance` if
        no instance took the invocation in time."""
        function = version.function
        reason = self._admission.try_acquire(function, version.spec.concurrency.reserved)
        if reason is not None:
            self._metrics.throttles.labels(version.spec.name, reason).inc()
            raise Throttled(reason)
        try:
            await self._dispatcher.submit(version, invocation)
            outcome = await invocation.future
        finally:
            self._admission.release(function)
        self._record(version, outcome)
        return outcome

    def _record(self, version: FunctionVersion, outcome: Outcome) -> None:
        labels = (version.spec.name, version.version)
        m = self._metrics
        m.invocations.labels(*labels, "error" if outcome.error_type else "success").inc()
        report = outcome.report
        if report is not None:
            m.duration.labels(*labels).observe(report.duration_ms / 1000)
            if report.init_duration_ms > 0:
                m.cold_starts.labels(*labels).inc()
                m.init_duration.labels(*labels).observe(report.init_duration_ms / 1000)
            elif report.restore_duration_ms > 0:
                m.cold_starts.labels(*labels).inc()
                m.restore_duration.labels(*labels).observe(report.restore_duration_ms / 1000)
