"""The operator's Prometheus metrics (prometheus-client), served on --metrics-port.

Counters and histograms are bumped by the handlers on transitions (not on every reconcile),
so a settled cluster keeps them still. Resource counts by phase are computed at scrape time
from a map that the watch events keep current: the map is a view of the cluster, not state.
"""

from __future__ import annotations

import datetime
import threading
from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

RECONCILES = Counter("inferator_reconcile_total", "Reconciles by kind and outcome", ["kind", "outcome"])
RECONCILE_SECONDS = Histogram("inferator_reconcile_duration_seconds", "Reconcile duration", ["kind"])
RECONCILE_ERRORS = Counter(
    "inferator_reconcile_errors_total", "Reconciles that raised (retried with backoff)", ["kind"]
)
WORKQUEUE_DEPTH = Gauge(
    "inferator_workqueue_depth",
    "Objects queued for a reconcile (due now, or later: polls and retries)",
    ["kind"],
)
PROFILE_SELECTIONS = Counter(
    "inferator_profile_selections_total",
    "Profile selection results that changed a service's status, by outcome",
    ["outcome"],  # selected | no_compatible_profile
)
# Minutes to hours: a large model's download or startup dominates.
_SLOW_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, float("inf"))
TIME_TO_READY = Histogram(
    "inferator_time_to_ready_seconds",
    "From creation (apply) to the Ready condition turning True",
    ["kind"],
    buckets=_SLOW_BUCKETS,
)
PREFETCH_BYTES = Counter("inferator_prefetch_bytes_total", "Bytes of model weights verified on cache volumes")
PREFETCH_SECONDS = Histogram(
    "inferator_prefetch_duration_seconds", "Prefetch Job run time, start to completion", buckets=_SLOW_BUCKETS
)


class PhaseCensus(Collector):
    """`inferator_resources{kind,phase}`: how many objects of each kind are in each phase."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str, str], str] = {}

    def observe(self, kind: str, namespace: str, name: str, phase: str | None, deleted: bool = False) -> None:
        with self._lock:
            if deleted:
                self._phases.pop((kind, namespace, name), None)
            else:
                self._phases[(kind, namespace, name)] = phase or "Pending"

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            counts = Tally((kind, phase) for (kind, _, _), phase in self._phases.items())
        family = GaugeMetricFamily(
            "inferator_resources", "Resources by kind and phase", labels=["kind", "phase"]
        )
        for (kind, phase), count in sorted(counts.items()):
            family.add_metric([kind, phase], count)
        yield family


CENSUS = PhaseCensus()
REGISTRY.register(CENSUS)


def seconds_since(timestamp: str | None, until: str | None = None) -> float | None:
    """Seconds between two RFC 3339 timestamps (the second defaults to now); None if unknown."""
    if not timestamp:
        return None
    start = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    end = (
        datetime.datetime.fromisoformat(until.replace("Z", "+00:00"))
        if until
        else datetime.datetime.now(datetime.UTC)
    )
    return max(0.0, (end - start).total_seconds())
