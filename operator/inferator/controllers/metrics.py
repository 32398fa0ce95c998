"""The operator's Prometheus metrics (prometheus-client), served on --metrics-port."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("inferator_reconcile_total", "Reconciles by kind and outcome", ["kind", "outcome"])
RECONCILE_SECONDS = Histogram("inferator_reconcile_duration_seconds", "Reconcile duration", ["kind"])
RESOURCES_BY_PHASE = Gauge("inferator_resources", "Resources by kind and phase", ["kind", "phase"])
