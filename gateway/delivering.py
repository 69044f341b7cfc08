"""The deliverer: takes due events off the queue and runs them through the same dispatcher as sync calls.

Each attempt ends in one `retrying` step (Done, Retry or Fail), decided purely in `retrying.py` and then written to
the queue: success → status `succeeded` (+ onSuccess destination); retry → back on the queue at its due time;
failure → a dead-letter record (+ onFailure destination). An event is only ever removed from the queue by one of
these writes, so a crash at any point leaves it leased, and it is delivered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid

from kambda import naming

from . import retrying
from .dispatching import Invocation, NoInstance, Outcome
from .invoke_configs import InvokeConfigs
from .invoking import Throttled
from .metrics import Metrics
from .placement import NoOwner, OwnerLost, Placement
from .queueing import DEAD_LETTERED, RETRYING, SUCCEEDED, DeadLetter, Event, EventQueue, Status
from .registry import FunctionVersion, NotFound, Registry
from .retention import Retention
from .settings import GatewaySettings

log = logging.getLogger(__name__)
STATS_INTERVAL = 1.0
SELF_LIMITED_DELAY = 0.05  # an event held back only because this gateway already fills the function's reserve


class Deliverer:
    def __init__(
        self,
        *,
        queue: EventQueue,
        registry: Registry,
        placement: Placement,
        metrics: Metrics,
        configs: InvokeConfigs,
        settings: GatewaySettings,
    ) -> None:
        self._queue = queue
        self._registry = registry
        self._placement = placement
        self._metrics = metrics
        self._configs = configs
        self._settings = settings
        self._timing = retrying.RetryTiming(settings.retry_base_delay, settings.throttle_base_delay)
        self._retention = Retention(settings.status_retention, settings.status_max_bytes)
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight: dict[str, int] = {}  # function -> async deliveries running on this gateway

    def poke(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        stats_task = asyncio.create_task(self._refresh_stats())
        try:
            while True:
                free = self._settings.max_async_inflight - len(self._tasks)
                if free <= 0:
                    await self._sleep()  # until a delivery finishes
                    continue
                events = await self._queue.claim(free, time.time())
                for event in events:
                    task = asyncio.create_task(self._deliver(event))
                    self._tasks.add(task)
                    task.add_done_callback(self._done)
                if not events and not self._queue.blocking_claim:
                    await self._sleep()
        finally:
            stats_task.cancel()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(stats_task, *self._tasks, return_exceptions=True)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery failed", exc_info=task.exception())
        self._wake.set()

    async def _sleep(self) -> None:
        due = self._queue.next_due()
        timeout = 1.0 if due is None else min(1.0, max(0.001, due - time.time()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    async def _refresh_stats(self) -> None:
        while True:
            try:
                self._metrics.queue_stats = await self._queue.stats()
                await self._queue.purge(self._retention, time.time())
            except Exception:
                log.exception("could not read queue statistics or purge statuses")
            await asyncio.sleep(STATS_INTERVAL)

    # ---- one attempt -----------------------------------------------------------------------------------------

    async def _deliver(self, event: Event) -> None:
        now = time.time()
        try:
            version = self._registry.resolve(naming.FunctionRef(event.function, event.qualifier))
        except NotFound:
            await self._fail(event, None, retrying.RESOURCE_NOT_FOUND, None)
            return
        spec = version.spec
        config = self._configs.effective(spec)
        early = retrying.before_attempt(event, config, spec.concurrency.reserved, now)
        if early is not None:
            await self._fail(event, version, early.condition, None)
            return
        reserved = spec.concurrency.reserved
        if reserved is not None and self._inflight.get(spec.name, 0) >= reserved:
            # Our own deliveries fill the reserve: wait for one of them, this is no throttle.
            event.not_before = now + SELF_LIMITED_DELAY
            await self._queue.reschedule(event, self._status(event, RETRYING, version=None))
            return
        result, outcome = await self._attempt(event, version)
        step = retrying.after_attempt(event, result, config, self._timing, time.time())
        if isinstance(step, retrying.Done):
            assert outcome is not None
            await self._queue.succeed(event, self._status(event, SUCCEEDED, version, outcome))
            if config.on_success:
                await self._send_destination(event, version, config.on_success, "Success", outcome, "success")
        elif isinstance(step, retrying.Retry):
            retrying.apply(event, step)
            self._metrics.async_retries.labels(spec.name, result.value).inc()
            await self._queue.reschedule(event, self._status(event, RETRYING, version, outcome))
        else:
            await self._fail(event, version, step.condition, outcome)

    async def _attempt(self, event: Event, version: FunctionVersion) -> tuple[retrying.Result, Outcome | None]:
        spec = version.spec
        self._inflight[spec.name] = self._inflight.get(spec.name, 0) + 1
        event.attempts += 1
        invocation = Invocation(
            request_id=event.request_id,
            payload=event.payload,
            invoked_arn=self._arn(event.function, event.qualifier),
            trace_id=event.trace_id,
        )
        try:
            outcome = await self._placement.run(version, invocation)
        except Throttled:
            event.attempts -= 1  # a throttle is no attempt (Lambda retries throttles on their own clock)
            return retrying.Result.THROTTLED, None
        except (NoInstance, NoOwner):
            event.attempts -= 1  # never reached the function
            return retrying.Result.PLATFORM_ERROR, None
        except OwnerLost:
            return retrying.Result.PLATFORM_ERROR, None  # it may have run: this attempt counts
        finally:
            self._inflight[spec.name] -= 1
        if outcome.error_type is not None:
            return retrying.Result.FUNCTION_ERROR, outcome
        return retrying.Result.SUCCESS, outcome

    async def _fail(
        self, event: Event, version: FunctionVersion | None, condition: str, outcome: Outcome | None
    ) -> None:
        now = time.time()
        status = self._status(event, DEAD_LETTERED, version, outcome, condition=condition)
        record = DeadLetter(
            request_id=event.request_id,
            function=event.function,
            qualifier=event.qualifier,
            payload=event.payload,
            condition=condition,
            attempts=event.attempts,
            enqueued_at=event.enqueued_at,
            failed_at=now,
            executed_version=status.executed_version,
            error_type=status.error_type,
            error=status.error,
        )
        await self._queue.dead_letter(event, record, status)
        self._metrics.dead_lettered.labels(event.function, condition).inc()
        log.warning("event %s for %s dead-lettered: %s", event.request_id, event.function, condition)
        if version is not None:
            config = self._configs.effective(version.spec)
            if config.on_failure:
                await self._send_destination(event, version, config.on_failure, condition, outcome, "failure")

    async def _send_destination(
        self,
        event: Event,
        version: FunctionVersion,
        destination: str,
        condition: str,
        outcome: Outcome | None,
        kind: str,
    ) -> None:
        response: object = None
        if outcome is not None:
            try:
                response = json.loads(outcome.payload) if outcome.payload else None
            except ValueError:
                response = outcome.payload.decode(errors="replace")
        record = retrying.destination_record(
            event=event,
            function_arn=self._arn(event.function, event.qualifier or naming.LATEST),
            condition=condition,
            executed_version=version.version if outcome is not None else None,
            function_error="Unhandled" if outcome is not None and outcome.error_type else None,
            response=response,
        )
        try:
            self._registry.resolve(naming.FunctionRef(destination, None))
        except NotFound:
            log.error("destination %s of %s does not exist; record dropped", destination, event.function)
            return
        await self._queue.enqueue(
            Event(
                request_id=str(uuid.uuid4()),
                function=destination,
                qualifier=None,
                payload=json.dumps(record).encode(),
                enqueued_at=time.time(),
            )
        )
        self._metrics.destination_deliveries.labels(event.function, destination, kind).inc()
        self.poke()

    def _arn(self, name: str, qualifier: str | None) -> str:
        return naming.function_arn(self._settings.region, self._settings.account_id, name, qualifier)

    @staticmethod
    def _status(
        event: Event,
        state: str,
        version: FunctionVersion | None,
        outcome: Outcome | None = None,
        *,
        condition: str | None = None,
    ) -> Status:
        text = outcome.payload.decode(errors="replace") if outcome is not None else None
        failed = outcome is not None and outcome.error_type is not None
        return Status(
            request_id=event.request_id,
            function=event.function,
            qualifier=event.qualifier,
            state=state,
            enqueued_at=event.enqueued_at,
            updated_at=time.time(),
            attempts=event.attempts,
            executed_version=version.version if version is not None and outcome is not None else None,
            result=None if failed else text,
            error=text if failed else None,
            error_type=outcome.error_type if outcome is not None else None,
            condition=condition,
        )
