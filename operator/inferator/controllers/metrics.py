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


class ValidationResults(Collector):
    """The last validation run of each InferenceService, from its status as the watch shows it:
    `inferator_validation_*{namespace,service,profile[,concurrency]}`. A view of the cluster, like
    the census: a restarted operator exports the same series once its watch has listed."""

    LEVEL_METRICS = (
        ("inferator_validation_ttft_p99_seconds", "Time to first token, p99, measured by the validation run",
         "ttftP99Ms", 1e-3),
        ("inferator_validation_inter_token_latency_p99_seconds", "Inter-token latency, p99, measured by the validation run",
         "interTokenLatencyP99Ms", 1e-3),
        ("inferator_validation_output_tokens_per_second", "Output tokens/s of one replica, measured by the validation run",
         "outputTokensPerSecond", 1.0),
    )  # fmt: skip

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[tuple[str, str], dict[str, object]] = {}

    def observe(
        self, namespace: str, name: str, validation: dict[str, object] | None, deleted: bool = False
    ) -> None:
        with self._lock:
            if deleted or not validation or validation.get("state") != "Succeeded":
                self._runs.pop((namespace, name), None)
            else:
                self._runs[(namespace, name)] = validation

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            runs = dict(self._runs)
        labels = ["namespace", "service", "profile"]
        for metric, help_, key, scale in self.LEVEL_METRICS:
            family = GaugeMetricFamily(metric, help_, labels=[*labels, "concurrency"])
            for (namespace, name), run in sorted(runs.items()):
                for level in run.get("levels") or []:  # type: ignore[attr-defined]
                    if isinstance(level, dict) and isinstance(level.get(key), (int, float)):
                        family.add_metric([namespace, name, str(run.get("profile")), str(level.get("concurrency"))],
                                          float(level[key]) * scale)  # fmt: skip
            yield family
        kv = GaugeMetricFamily("inferator_validation_kv_cache_peak_ratio",
                               "KV-cache use at the validation load's peak (0..1)", labels=labels)  # fmt: skip
        slo = GaugeMetricFamily("inferator_validation_meets_slo",
                                "1 when the validation run meets the service's SLO, 0 when it misses it", labels=labels)  # fmt: skip
        for (namespace, name), run in sorted(runs.items()):
            if isinstance(run.get("kvCachePeak"), (int, float)):
                kv.add_metric([namespace, name, str(run.get("profile"))], float(run["kvCachePeak"]))  # type: ignore[arg-type]
            if isinstance(run.get("meetsSLO"), bool):
                slo.add_metric([namespace, name, str(run.get("profile"))], 1.0 if run["meetsSLO"] else 0.0)
        yield kv
        yield slo


VALIDATION = ValidationResults()
REGISTRY.register(VALIDATION)


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
