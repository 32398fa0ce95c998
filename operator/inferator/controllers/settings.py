"""Operator-wide kopf settings, in one startup handler."""

from __future__ import annotations

import logging
from typing import Any

import kopf
from prometheus_client import start_http_server

from inferator.api import API_GROUP

METRICS_PORT: dict[str, int] = {"port": 0}


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    # Annotations, not status: the CRD schemas are structural, so unknown status fields
    # (kopf's default `status.kopf`) would be pruned by the API server and progress lost.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.batching.error_delays = [1, 2, 5, 10, 30, 60, 120]
    if METRICS_PORT["port"]:
        start_http_server(METRICS_PORT["port"], addr="0.0.0.0")  # noqa: S104 (scraped from the pod IP)
        logger.info("metrics on :%d/metrics", METRICS_PORT["port"])
