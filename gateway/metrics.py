"""Prometheus metrics of one gateway. Counters and histograms are updated on the hot path; gauges of queues and
instances are read from the dispatcher at scrape time, so they can never drift from the truth."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .dispatching import Dispatcher
from .pools import WarmPools
from .queueing import QueueStats

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.invocations = Counter(
            "kambda_invocations",
            "Invocations answered, by outcome (success, error).",
            ["function", "version", "outcome"],
            registry=r,
        )
        self.placements = Counter(
            "kambda_invocation_placements",
            "Invocations this replica accepted (sync and async deliveries), by where they ran: here (it owns the "
            "function) or forwarded to the owning replica.",
            ["function", "placement"],
            registry=r,
        )
        self.throttles = Counter(
            "kambda_throttles", "Invocations refused with 429, by Lambda's Reason.", ["function", "reason"], registry=r
        )
        self.duration = Histogram(
            "kambda_invocation_duration_seconds",
            "Handler duration as the agent measured it.",
            ["function", "version"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.init_duration = Histogram(
            "kambda_init_duration_seconds",
            "Runtime init duration of cold starts.",
            ["function", "version"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.restore_duration = Histogram(
            "kambda_restore_duration_seconds",
            "Restore duration of cold starts from a SnapStart template (instead of an init).",
            ["function", "version"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.cold_starts = Counter(
            "kambda_cold_starts",
            "Invocations served by a freshly initialised (or restored) runtime.",
            ["function", "version"],
            registry=r,
        )
        self.instances_started = Counter(
            "kambda_instances_started", "Instances the scaler asked a backend for.", ["function", "version"], registry=r
        )
        self.instances_stopped = Counter(
            "kambda_instances_stopped",
            "Instances retired after their idle window.",
            ["function", "version"],
            registry=r,
        )

        self.events_enqueued = Counter(
            "kambda_async_events_enqueued", "Asynchronous events durably queued.", ["function"], registry=r
        )
        self.async_retries = Counter(
            "kambda_async_retries",
            "Asynchronous events re-queued, by cause (function-error, throttled, platform-error).",
            ["function", "cause"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "kambda_async_dead_lettered", "Events that failed for good, by condition.", ["function", "condition"],
            registry=r,
        )  # fmt: skip
        self.destination_deliveries = Counter(
            "kambda_destination_deliveries",
            "Destination records queued for a destination function, by kind (success, failure).",
            ["function", "destination", "kind"],
            registry=r,
        )
        self.queue_stats = QueueStats()  # refreshed by the deliverer; read at scrape time

    def watch(self, dispatcher: Dispatcher) -> None:
        self.registry.register(_DispatcherCollector(dispatcher))
        self.registry.register(_QueueCollector(self))

    def watch_pools(self, pools: WarmPools) -> None:
        self.registry.register(_PoolCollector(pools))


class _QueueCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._metrics.queue_stats
        depth = GaugeMetricFamily(
            "kambda_async_queue_depth", "Asynchronous events not yet finished.", labels=["function"]
        )
        oldest = GaugeMetricFamily(
            "kambda_async_oldest_event_age_seconds", "Age of the oldest unfinished event.", labels=["function"]
        )
        now = time.time()
        for function, entry in stats.functions.items():
            depth.add_metric([function], entry.depth)
            if entry.oldest_enqueued_at is not None:
                oldest.add_metric([function], max(0.0, now - entry.oldest_enqueued_at))
        yield depth
        yield oldest
        yield GaugeMetricFamily("kambda_dead_letters", "Events in the dead-letter queue.", value=stats.dead_letters)


class _DispatcherCollector(Collector):
    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher

    def collect(self) -> Iterator[GaugeMetricFamily]:
        concurrent = GaugeMetricFamily(
            "kambda_concurrent_executions", "Invocations running on an instance.", labels=["function", "version"]
        )
        queued = GaugeMetricFamily(
            "kambda_queued_invocations", "Invocations waiting for an instance.", labels=["function", "version"]
        )
        instances = GaugeMetricFamily(
            "kambda_instances",
            "Instances by state (idle, busy, stalled, starting).",
            labels=["function", "version", "state"],
        )
        for pool in self._dispatcher.snapshots():
            labels = [pool.version.spec.name, pool.version.version]
            concurrent.add_metric(labels, pool.busy)
            queued.add_metric(labels, pool.pending)
            stalled = len(pool.stalled)
            instances.add_metric([*labels, "idle"], len(pool.idle))
            instances.add_metric([*labels, "busy"], pool.connected - len(pool.idle) - stalled)
            instances.add_metric([*labels, "stalled"], stalled)
            instances.add_metric([*labels, "starting"], len(pool.starting))
        yield concurrent
        yield queued
        yield instances


class _PoolCollector(Collector):
    def __init__(self, pools: WarmPools) -> None:
        self._pools = pools

    def collect(self) -> Iterator[GaugeMetricFamily]:
        waiting = GaugeMetricFamily(
            "kambda_warm_pool_pods", "Warm-pool pods waiting on this gateway to be specialised.",
            labels=["namespace", "runtime"],
        )  # fmt: skip
        for (namespace, runtime), count in sorted(self._pools.idle().items()):
            waiting.add_metric([namespace, runtime], count)
        yield waiting
