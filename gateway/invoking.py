"""Running one invocation on an instance and recording what happened: shared by sync calls and async delivery."""

from __future__ import annotations

from .dispatching import Dispatcher, Invocation, Outcome
from .metrics import Metrics
from .registry import FunctionVersion


class Invoker:
    def __init__(self, dispatcher: Dispatcher, metrics: Metrics) -> None:
        self._dispatcher = dispatcher
        self._metrics = metrics

    async def run(self, version: FunctionVersion, invocation: Invocation) -> Outcome:
        """Dispatch and wait for the outcome; raises `dispatching.NoInstance` if no instance took it in time."""
        await self._dispatcher.submit(version, invocation)
        outcome = await invocation.future
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
