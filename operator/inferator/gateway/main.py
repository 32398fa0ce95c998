"""`inferator gateway`: the process in an InferenceGateway's pods (and in the benchmark)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from aiohttp import web

from inferator.gateway import config as gateway_config
from inferator.gateway.app import Gateway
from inferator.gateway.discovery import Catalog, ClusterCatalog, StaticCatalog


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed (the gateway image has it): the event loop and socket transports
    are most of a proxied request's CPU, and uvloop's are several times cheaper."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="inferator gateway", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="the JSON the operator renders")
    parser.add_argument("--host", default="0.0.0.0")  # noqa: S104 - a server in a pod listens on the pod's address
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = gateway_config.load(args.config)
    catalog: Catalog
    if config.static_routes:
        catalog = StaticCatalog(config)
    else:
        cluster = ClusterCatalog(config)
        cluster.start()
        catalog = cluster
    gateway = Gateway(config, catalog)
    loop = _event_loop()
    # handler_cancellation: a client that hangs up cancels its handler, which closes the upstream
    # connection, so the engine stops generating (aiohttp leaves handlers running by default).
    web.run_app(gateway.app(), host=args.host, port=args.port, handler_cancellation=True, access_log=None,
                print=None, loop=loop)  # fmt: skip
    return 0
