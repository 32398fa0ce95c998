"""`inferator run`: start the operator."""

from __future__ import annotations

import argparse
import logging
import os
import re
import secrets
import socket

import kopf
from kopf._core.engines.peering import Identity  # kopf exports the type only under its private path

# Handlers that run on every watch event (indices, the queue's feeders, censuses): at 1,000
# services their "succeeded" lines were thousands per second. Failures are still logged.
_EVENT_HANDLER_SUCCESS = re.compile(
    r"^(Handler|Indexer) '(inferator_\w+|service_changed|child_changed|cache_changed|census_\w+|gateway_\w+)' succeeded"
)


def _quiet_watch_handlers(record: logging.LogRecord) -> bool:
    return not _EVENT_HANDLER_SUCCESS.match(record.getMessage())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="inferator run", description="Run the Inferator operator.")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)"
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch the whole cluster (default)"
    )
    parser.add_argument("--liveness-port", type=int, default=8080, help="serve /healthz here (0: off)")
    parser.add_argument(
        "--metrics-port", type=int, default=9090, help="serve Prometheus /metrics here (0: off)"
    )
    parser.add_argument(
        "--peering", default=None, help="kopf peering name: replicas with the same name elect one active"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:
        logging.getLogger("kopf.objects").addFilter(_quiet_watch_handlers)
    # Importing registers the handlers with kopf's default registry.
    from inferator.controllers import inferencegateway, inferenceservice, modelcache, settings  # noqa: F401

    settings.METRICS_PORT["port"] = args.metrics_port
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    # kopf's default peering identity calls getpass.getuser(), which fails for a UID with no
    # passwd entry (a restricted pod running as 65532): name ourselves after the pod instead.
    identity = f"{os.environ.get('HOSTNAME') or socket.gethostname()}/{os.getpid()}"
    kopf.run(
        identity=Identity(identity),
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=liveness,
        standalone=args.peering is None,
        peering_name=args.peering,
        # kopf pauses every peer that sees another of equal or higher priority; equal
        # priorities would pause all replicas. A random one per process makes exactly one
        # active, and a standby takes over once the active peer's record expires.
        priority=secrets.randbelow(1 << 30) + 1,
    )
    return 0
