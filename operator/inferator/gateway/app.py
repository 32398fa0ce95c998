"""The gateway's HTTP server: authenticate, authorise, hold if needed, proxy, count, audit.

Order matters to users: a missing or wrong key is refused (401) before anything else is read
or any backend sees the request; a model the key may not use answers exactly like a model that
does not exist (404), so a key cannot probe the catalog; an exhausted quota answers 429 with
`Retry-After`. Answers stream through as the engine writes them, and a client that hangs up
cancels the handler, which closes the upstream connection, which makes vLLM/SGLang abort the
request (they watch the connection) instead of generating for nobody.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from inferator.gateway import routing, usage
from inferator.gateway.config import GatewayConfig, KeyPolicy
from inferator.gateway.discovery import Catalog, Route
from inferator.gateway.keys import KeyRing, Quotas

log = logging.getLogger("inferator.gateway")

# Headers a proxy must not forward (RFC 9110 connection-specific ones) and ones it rewrites.
_HOP = frozenset(
    h.lower()
    for h in ("Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
              "Transfer-Encoding", "Upgrade", "Content-Length", "Authorization", "Host", "Content-Encoding")
)  # fmt: skip


class Metrics:
    """The gateway's own /metrics: what a platform team charts and alerts on per key and model."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "inferator_gateway_requests", "Requests answered, by key id, model and HTTP status.",
            ["key", "model", "code"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "inferator_gateway_request_duration_seconds", "Time from request to the answer's end.",
            ["model"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )  # fmt: skip
        self.tokens = Counter(
            "inferator_gateway_tokens", "Tokens the engines reported, by key id, model and kind (prompt/completion).",
            ["key", "model", "kind"], registry=self.registry,
        )  # fmt: skip
        self.held = Gauge(
            "inferator_gateway_held_requests", "Requests waiting for a ready replica of their model.",
            ["model", "service"], registry=self.registry,
        )  # fmt: skip
        self.in_flight = Gauge(
            "inferator_gateway_in_flight_requests", "Requests being answered by a backend.",
            ["model", "service"], registry=self.registry,
        )  # fmt: skip


@dataclass
class _Exchange:
    """What the audit line says about one request."""

    started: float
    key: str = "-"
    model: str = "-"
    service: str = "-"
    upstream: str = "-"
    status: int = 0
    stream: bool = False
    held_ms: float = 0.0
    usage: usage.Usage | None = None
    error: str = ""


class Gateway:
    def __init__(self, config: GatewayConfig, catalog: Catalog, audit: TextIO = sys.stdout) -> None:
        self.config = config
        self.catalog = catalog
        self.keys = KeyRing(config.keys)
        self.quotas = Quotas(replicas=config.replicas)
        self.router = routing.Router(config.routing)
        self.metrics = Metrics()
        self.audit_out = audit
        self.session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/livez", self.livez)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_post("/v1/{path:.+}", self.proxy)
        for path in ("/rerank", "/score", "/classify", "/pooling"):  # vLLM's non-/v1 pooling routes
            app.router.add_post(path, self.proxy)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _app: web.Application) -> None:
        bind = getattr(self.catalog, "notifier", None)
        if bind is not None:
            bind.bind(asyncio.get_running_loop())
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=60, enable_cleanup_closed=True),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )

    async def _close(self, _app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    # -- small endpoints --------------------------------------------------------------------
    async def livez(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")  # the event loop answers: restarting would not help more

    async def healthz(self, _request: web.Request) -> web.Response:
        """Ready once the watches have listed services and pods: before that every model would
        look absent (404) instead of held."""
        synced = getattr(self.catalog, "synced", None)
        if synced is not None and not synced.is_set():
            return web.Response(status=503, text="listing services and pods")
        return web.Response(text="ok")

    async def prometheus(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), content_type="text/plain")

    async def list_models(self, request: web.Request) -> web.Response:
        policy = self.keys.lookup(_bearer(request))
        if policy is None:
            return _error(401, "invalid_api_key", "missing or unknown API key")
        data = [
            {"id": m, "object": "model", "owned_by": "inferator", "created": 0}
            for m in self.catalog.models()
            if policy.allows(m)
        ]
        return web.json_response({"object": "list", "data": data})

    # -- the proxy --------------------------------------------------------------------------
    async def proxy(self, request: web.Request) -> web.StreamResponse:
        exchange = _Exchange(started=time.monotonic())
        try:
            response = await self._proxy(request, exchange)
        except asyncio.CancelledError:
            exchange.status, exchange.error = 499, "client closed the connection"
            raise
        finally:
            self._account(request, exchange)
        return response

    async def _proxy(self, request: web.Request, ex: _Exchange) -> web.StreamResponse:
        policy = self.keys.lookup(_bearer(request))
        if policy is None:
            ex.status = 401
            return _error(401, "invalid_api_key", "missing or unknown API key")
        ex.key = policy.id
        try:
            payload = await request.json(loads=json.loads)
        except (ValueError, UnicodeDecodeError):
            ex.status = 400
            return _error(400, "invalid_request_error", "the body is not JSON")
        model = payload.get("model") if isinstance(payload, dict) else None
        if not isinstance(model, str) or not model:
            ex.status = 400
            return _error(400, "invalid_request_error", "the request names no `model`")
        ex.model = model
        route = self.catalog.route(model) if policy.allows(model) else None
        if route is None:
            ex.status = 404
            return _error(
                404, "model_not_found", f"the model {model!r} does not exist or this key may not use it"
            )
        ex.service = route.service
        wait = self.quotas.retry_after(policy)
        if wait is not None:
            ex.status = 429
            return _error(
                429, "rate_limit_exceeded", f"token quota of key {policy.id!r} used up", retry_after=wait
            )
        route = await self._ready(route, ex)
        if route is None:
            ex.status = 503
            return _error(
                503, "service_unavailable",
                f"no replica of {model!r} became ready within {self.config.hold_seconds:g} s",
                retry_after=max(1, round(self.config.hold_seconds / 4)),
            )  # fmt: skip
        return await self._forward(request, payload, route, policy, ex)

    async def _ready(self, route: Route, ex: _Exchange) -> Route | None:
        """The route once it has a ready replica, holding the request (bounded) until then."""
        if route.upstreams:
            return route
        started = time.monotonic()
        deadline = started + self.config.hold_seconds
        gauge = self.metrics.held.labels(route.model, route.service)
        gauge.inc()
        try:
            while True:
                await self.catalog.scale_up(route)
                current = self.catalog.route(route.model)
                if current is not None and current.upstreams:
                    return current
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                await self.catalog.changed(min(left, 5.0))
        finally:
            gauge.dec()
            ex.held_ms = (time.monotonic() - started) * 1000

    async def _forward(
        self, request: web.Request, payload: dict[str, Any], route: Route, policy: KeyPolicy, ex: _Exchange
    ) -> web.StreamResponse:
        assert self.session is not None
        ex.stream = bool(payload.get("stream"))
        injected = usage.ask_for_usage(payload)
        upstream = self.router.pick(list(route.upstreams), routing.prompt_prefix(payload))
        ex.upstream = upstream
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers["Content-Type"] = "application/json"
        in_flight = self.metrics.in_flight.labels(route.model, route.service)
        self.router.in_flight[upstream] += 1
        in_flight.inc()
        try:
            async with self.session.post(
                upstream + request.path, data=json.dumps(payload).encode(), headers=headers
            ) as answer:
                try:
                    return await self._relay(request, answer, policy, ex, injected)
                except BaseException:
                    answer.close()  # never back to the pool: the engine sees the hang-up and aborts
                    raise
        except (aiohttp.ClientConnectionError, TimeoutError) as error:
            ex.status, ex.error = 502, type(error).__name__
            return _error(
                502, "bad_gateway", f"the replica of {route.model!r} did not answer ({type(error).__name__})"
            )
        finally:
            self.router.in_flight[upstream] -= 1
            in_flight.dec()

    async def _relay(
        self,
        request: web.Request,
        answer: aiohttp.ClientResponse,
        policy: KeyPolicy,
        ex: _Exchange,
        injected: bool,
    ) -> web.StreamResponse:
        ex.status = answer.status
        out_headers = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
        if "text/event-stream" not in answer.headers.get("Content-Type", ""):
            body = await answer.read()
            ex.usage = usage.from_body(body) if answer.status < 400 else None
            self._charge(policy, ex)
            return web.Response(status=answer.status, body=body, headers=out_headers)
        response = web.StreamResponse(status=answer.status, headers=out_headers)
        await response.prepare(request)
        events = usage.EventStream(drop_usage_event=injected)
        ex.usage = events.usage
        # Once the headers are out, no error answer can follow: a broken side ends the stream,
        # and the audit line says which side it was.
        try:
            async for chunk in answer.content.iter_any():
                data = events.feed(chunk)
                if data:
                    await _send(response, data)
            tail = events.flush()
            if tail:
                await _send(response, tail)
            await _send(response, None)
        except _ClientGone:
            ex.status, ex.error = 499, "client closed the connection"
        except (aiohttp.ClientError, TimeoutError) as error:
            ex.status, ex.error = 502, f"the engine's stream broke ({type(error).__name__})"
        finally:
            if not events.usage.reported:  # an engine that reports none: count events
                events.usage.completion_tokens = events.events
            self._charge(policy, ex)
        return response

    def _charge(self, policy: KeyPolicy, ex: _Exchange) -> None:
        if ex.usage is None:
            return
        self.quotas.charge(policy, ex.usage.charged)
        self.metrics.tokens.labels(policy.id, ex.model, "prompt").inc(ex.usage.prompt_tokens)
        self.metrics.tokens.labels(policy.id, ex.model, "completion").inc(ex.usage.completion_tokens)

    def _account(self, request: web.Request, ex: _Exchange) -> None:
        elapsed = time.monotonic() - ex.started
        self.metrics.requests.labels(ex.key, ex.model, str(ex.status)).inc()
        if ex.model != "-":
            self.metrics.latency.labels(ex.model).observe(elapsed)
        line = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            "key": ex.key,
            "model": ex.model,
            "service": ex.service,
            "path": request.path,
            "status": ex.status,
            "stream": ex.stream,
            "prompt_tokens": ex.usage.prompt_tokens if ex.usage else 0,
            "completion_tokens": ex.usage.completion_tokens if ex.usage else 0,
            "latency_ms": round(elapsed * 1000, 2),
            "held_ms": round(ex.held_ms, 2),
            "upstream": ex.upstream,
        }
        if ex.error:
            line["error"] = ex.error
        self.audit_out.write(json.dumps(line, separators=(",", ":")) + "\n")
        self.audit_out.flush()


class _ClientGone(Exception):
    """Writing to the client failed: it closed the connection (often right after `[DONE]`)."""


async def _send(response: web.StreamResponse, data: bytes | None) -> None:
    """Write to the client (None: end the body), telling a client that left from an engine error:
    aiohttp raises ClientConnectionResetError, a ClientError, for both."""
    try:
        if data is None:
            await response.write_eof()
        else:
            await response.write(data)
    except ConnectionResetError as error:
        raise _ClientGone from error


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _error(status: int, code: str, message: str, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    body = {"error": {"message": message, "type": code, "code": status}}
    return web.json_response(body, status=status, headers=headers)
