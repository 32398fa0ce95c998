"""Operator-wide kopf settings, in one startup handler."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf
import yaml
from prometheus_client import start_http_server

from inferator.api import API_GROUP
from inferator.profiles.catalog import BUILTIN_CATALOG, GpuSpec, catalog_from_config
from inferator.profiles.settings import SelectionSettings

METRICS_PORT: dict[str, int] = {"port": 0}
CONFIG_DIR_ENV = "INFERATOR_CONFIG_DIR"
DEFAULT_CONFIG_DIR = "/etc/inferator"  # the chart mounts its ConfigMap here


@dataclass
class SelectionConfig:
    """Selection settings and GPU catalog, read once at start (the chart restarts pods on change)."""

    settings: SelectionSettings = field(default_factory=SelectionSettings)
    catalog: dict[str, GpuSpec] = field(default_factory=lambda: dict(BUILTIN_CATALOG))


SELECTION = SelectionConfig()


def load_selection_config(directory: Path) -> SelectionConfig:
    """`selection.yaml` and `catalog.yaml` from the operator's config directory, when present.

    A bad file raises ValueError naming the file: an operator that silently ignored a typo in
    its ranking or catalog would select other profiles than the platform team configured.
    """
    config = SelectionConfig()
    for name in ("selection.yaml", "catalog.yaml"):
        path = directory / name
        if not path.is_file():
            continue
        try:
            data = yaml.safe_load(path.read_text()) or {}
            if not isinstance(data, dict):
                raise ValueError(f"expected a mapping, found {type(data).__name__}")
            if name == "selection.yaml":
                config.settings = SelectionSettings.from_dict(data)
            else:
                config.catalog = catalog_from_config(data)
        except (ValueError, TypeError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: {exc}") from exc
    return config


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
    # Sync handlers (the ModelCache's; InferenceServices have their own work queue) run in a
    # thread pool; a cache's reconcile mostly waits on the API server, so the default pool
    # (CPUs + 4 threads) leaves many caches queued while the operator idles.
    settings.execution.max_workers = 32
    directory = Path(os.environ.get(CONFIG_DIR_ENV, DEFAULT_CONFIG_DIR))
    try:
        loaded = load_selection_config(directory)
    except ValueError as exc:
        raise kopf.PermanentError(f"invalid operator configuration: {exc}") from exc
    SELECTION.settings, SELECTION.catalog = loaded.settings, loaded.catalog
    logger.info(
        "selection: engines %s, %d GPU products in the catalog", loaded.settings.engines, len(loaded.catalog)
    )
    if METRICS_PORT["port"]:
        start_http_server(METRICS_PORT["port"], addr="0.0.0.0")  # noqa: S104 (scraped from the pod IP)
        logger.info("metrics on :%d/metrics", METRICS_PORT["port"])
