"""Prometheus metrics, in one place.

Queue and group figures come from the same observations that drive status and
scaling; the collector serves that cached snapshot, so a scrape never touches Redis.
Series of a deleted queue or group are dropped with it (bounded cardinality: the
only labels are namespace, queue, group, partition).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .redisgw.poller import GroupFigures as PolledFigures

NS = "agentqueue"


@dataclass
class QueueFigures:
    partitions: dict[int, dict[str, float]] = field(default_factory=dict)
    slo_breaches: dict[str, float] = field(default_factory=dict)
    """Objective -> 1 breached / 0 within; objectives that cannot be measured are absent."""
    trimmed_total: float = 0.0
    dropped_undelivered_total: float = 0.0


@dataclass
class GroupReport:
    """What the group keeper last observed of a ConsumerGroup: the poller's figures as
    they came (one type from the poll to status, the SLO and these metrics; nothing
    copied field by field), and what the keeper did. Owned by the keeper
    (keepers/groups.py `reports`); metrics only read it."""

    queue: str
    figures: PolledFigures | None = None
    """As last read; kept (with `observed_at`) while Redis cannot be read, rather than
    dropped to zero as if the work were done. None: never read."""
    observed_at: float | None = None
    """When Redis was last read for these figures (epoch seconds); None: never."""
    poll_interval_s: float = 1.0
    current_replicas: int | None = None
    desired_replicas: int | None = None
    reclaimed_total: int = 0
    dead_lettered_total: int = 0

    def touch(self, at: float) -> None:
        """The poll read the same figures again at `at` (pollhub.Quiet's touch)."""
        self.observed_at = at


_QUEUE_GAUGES = {
    "length": "Entries in the queue partition.",
    "dead_letter_length": "Entries in the partition's dead-letter queue.",
    "scheduled_retries": "Messages waiting in the partition's retry schedule.",
    "memory_bytes": "Redis memory used by the partition's keys.",
}


class _SnapshotCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        qlabels = ["namespace", "queue", "partition"]
        gauges = {k: GaugeMetricFamily(f"{NS}_queue_{k}", d, labels=qlabels)
                  for k, d in _QUEUE_GAUGES.items()}
        trimmed = CounterMetricFamily(f"{NS}_queue_trimmed", "Entries trimmed by retention.",
                                      labels=["namespace", "queue"])
        dropped = CounterMetricFamily(f"{NS}_queue_dropped_undelivered",
                                      "Undelivered entries trimmed (protection off).",
                                      labels=["namespace", "queue"])
        retries = CounterMetricFamily(f"{NS}_queue_retries",
                                      "Nacks that scheduled a retry (the partition's stats "
                                      "hash; restarts with Redis if not persisted).",
                                      labels=qlabels)
        slo = GaugeMetricFamily(f"{NS}_queue_slo_breached",
                                "1 while an objective is breached, by objective.",
                                labels=["namespace", "queue", "objective"])
        for (ns, queue), fig in sorted(self.m.queues.items()):
            for part, values in sorted(fig.partitions.items()):
                for key, family in gauges.items():
                    family.add_metric([ns, queue, str(part)], values.get(key, 0.0))
                if "retries_total" in values:  # not for PubSub (nothing is retried)
                    retries.add_metric([ns, queue, str(part)], values["retries_total"])
            trimmed.add_metric([ns, queue], fig.trimmed_total)
            dropped.add_metric([ns, queue], fig.dropped_undelivered_total)
            for objective, value in sorted(fig.slo_breaches.items()):
                slo.add_metric([ns, queue, objective], value)
        yield from gauges.values()
        yield from (trimmed, dropped, retries, slo)

        glabels = ["namespace", "queue", "group"]
        gfam = {
            "lag": GaugeMetricFamily(f"{NS}_group_lag", "Entries not yet delivered.", labels=glabels),
            "pending": GaugeMetricFamily(f"{NS}_group_pending", "Delivered, not acknowledged.",
                                         labels=glabels),
            "due_retries": GaugeMetricFamily(f"{NS}_group_due_retries", "Retries due now.",
                                             labels=glabels),
            "oldest_pending_age_seconds": GaugeMetricFamily(
                f"{NS}_group_oldest_pending_age_seconds", "Idle time of the oldest pending entry.",
                labels=glabels),
            "consumers": GaugeMetricFamily(f"{NS}_group_consumers", "Consumers in the group.",
                                           labels=glabels),
            "current_replicas": GaugeMetricFamily(f"{NS}_group_replicas_current",
                                                  "Replicas of the scale target.", labels=glabels),
            "desired_replicas": GaugeMetricFamily(f"{NS}_group_replicas_desired",
                                                  "Replicas wanted.", labels=glabels),
        }
        reclaimed = GaugeMetricFamily(f"{NS}_group_expired_pending",
                                      "Entries past the visibility timeout at the last sweep.",
                                      labels=glabels)
        dead = CounterMetricFamily(f"{NS}_group_dead_lettered",
                                   "Entries moved to the dead-letter queue.", labels=glabels)
        for (ns, group), g in sorted(self.m.group_reports.items()):
            labels = [ns, g.queue, group]
            f = g.figures
            shown: dict[str, float | None] = {
                "lag": f.lag if f else 0, "pending": f.pending if f else 0,
                "due_retries": f.due_retries if f else 0,
                "oldest_pending_age_seconds": f.oldest_pending_age_s if f else 0,
                "consumers": f.consumers if f else 0,
                "current_replicas": g.current_replicas, "desired_replicas": g.desired_replicas}
            for key, family in gfam.items():
                shown_value = shown[key]
                if shown_value is not None:
                    family.add_metric(labels, shown_value)
            reclaimed.add_metric(labels, g.reclaimed_total)
            dead.add_metric(labels, g.dead_lettered_total)
        yield from gfam.values()
        yield from (reclaimed, dead)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.queues: dict[tuple[str, str], QueueFigures] = {}
        self.group_reports: Mapping[tuple[str, str], GroupReport] = {}
        """The group keeper's reports (set by the Runtime); read at each scrape."""
        self.reconcile_duration = Histogram(
            f"{NS}_reconcile_duration_seconds", "Time spent reconciling one object.",
            ["kind"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.reconcile_errors = Counter(
            f"{NS}_reconcile_errors", "Failed reconciles by kind and reason.",
            ["kind", "reason"], registry=self.registry)
        self.redis_latency = Histogram(
            f"{NS}_redis_command_duration_seconds", "Latency of the operator's Redis round trips.",
            ["operation"], registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
        self.redis_up = Counter(
            f"{NS}_redis_unavailable", "Times Redis could not be reached.", [],
            registry=self.registry)
        self.status_patches = Counter(
            f"{NS}_status_patches", "Status patches sent to the API server, by kind (at "
            "rest only changes are written).", ["kind"], registry=self.registry)
        self.scale_events = Counter(
            f"{NS}_scale_events", "Scale operations on consumer workloads.",
            ["namespace", "group", "direction"], registry=self.registry)
        self.registry.register(_SnapshotCollector(self))
        self.started = time.time()

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def observe_queue(self, namespace: str, queue: str,
                      partitions: dict[int, dict[str, float]]) -> QueueFigures:
        """Record a queue's per-partition figures; its counters (retention) and SLO
        gauges are kept (replacing the whole entry would reset the counters)."""
        figures = self.queues.setdefault((namespace, queue), QueueFigures())
        figures.partitions = dict(partitions)
        return figures

    def add_trimmed(self, namespace: str, queue: str, trimmed: int, dropped: int) -> None:
        """Count a retention pass's trims (agentqueue_queue_trimmed_total and
        agentqueue_queue_dropped_undelivered_total)."""
        figures = self.queues.setdefault((namespace, queue), QueueFigures())
        figures.trimmed_total += trimmed
        figures.dropped_undelivered_total += dropped

    def set_slo(self, namespace: str, queue: str, gauges: dict[str, float]) -> None:
        """The queue's SLO gauges (objective -> 1 breached, 0 within); {} drops them."""
        figures = self.queues.get((namespace, queue))
        if figures is None:
            if not gauges:
                return
            figures = self.queues[(namespace, queue)] = QueueFigures()
        figures.slo_breaches = dict(gauges)

    def forget_queue(self, namespace: str, queue: str) -> None:
        self.queues.pop((namespace, queue), None)

