"""The gateway's data plane over real loopback HTTP: a fake engine, the gateway, real clients.

Everything here is the real server and the real client libraries (aiohttp, the `openai`
package); only the engine is a fake one (dev/fake_openai.py) and, in the hold tests, the
catalog's cluster seam (which replica is ready, scale up) is a small test double: the cluster
tier runs the real one against the API server.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from inferator.dev.fake_openai import FakeEngine
from inferator.gateway import routing, usage
from inferator.gateway.app import Gateway
from inferator.gateway.config import GatewayConfig, KeyPolicy, StaticRoute
from inferator.gateway.discovery import Route, StaticCatalog
from inferator.gateway.keys import KeyRing, Quotas

ALICE, BOB = "sk-alice-0123456789", "sk-bob-9876543210"


async def _serve(app: web.Application, cancel: bool = True) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, handler_cancellation=cancel, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@dataclass
class Bed:
    gateway: Gateway
    url: str
    engine: FakeEngine
    audit: io.StringIO
    http: aiohttp.ClientSession

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.getvalue().splitlines()]

    async def post(
        self, path: str, payload: dict[str, Any], key: str | None = ALICE
    ) -> aiohttp.ClientResponse:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return await self.http.post(self.url + path, json=payload, headers=headers)


def _config(tmp_path: Path, upstream: str, **extra: Any) -> GatewayConfig:
    (tmp_path / "alice").write_text(ALICE + "\n")
    (tmp_path / "bob").write_text(BOB)
    keys = [
        KeyPolicy(id="alice", file=str(tmp_path / "alice"), models=["*"], **extra.pop("alice", {})),
        KeyPolicy(id="bob", file=str(tmp_path / "bob"), models=["embedder"]),
    ]
    routes = {
        "tiny": StaticRoute(upstreams=[upstream], service="tiny-svc"),
        "embedder": StaticRoute(upstreams=[upstream]),
    }
    return GatewayConfig(keys=keys, static_routes=routes, **extra)


@asynccontextmanager
async def bed(
    tmp_path: Path, catalog: Any = None, engine: FakeEngine | None = None, cancel: bool = True, **extra: Any
) -> AsyncIterator[Bed]:
    engine = engine or FakeEngine(models=["tiny", "embedder"], tokens=5)
    engine_runner, engine_url = await _serve(engine.app())
    config = _config(tmp_path, engine_url, **extra)
    audit = io.StringIO()
    gateway = Gateway(config, catalog(config, engine_url) if catalog else StaticCatalog(config), audit=audit)
    gateway_runner, url = await _serve(gateway.app(), cancel)
    async with aiohttp.ClientSession() as http:
        try:
            yield Bed(gateway, url, engine, audit, http)
        finally:
            await gateway_runner.cleanup()
            await engine_runner.cleanup()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "a secret prompt"}]}


def test_no_key_or_a_wrong_key_is_refused_before_any_backend_sees_the_request(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with bed(tmp_path) as b:
            for key in (None, "sk-wrong", ALICE[:-1], "Basic " + ALICE):
                answer = await b.post("/v1/chat/completions", CHAT, key=key)
                assert answer.status == 401, key
                assert (await answer.json())["error"]["type"] == "invalid_api_key"
            assert (await b.http.get(b.url + "/v1/models")).status == 401
            assert b.engine.received == []
            assert [line["status"] for line in b.lines()] == [401] * 4

    run(scenario)


def test_models_lists_exactly_what_the_key_may_use_and_a_forbidden_model_looks_absent(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with bed(tmp_path) as b:
            for key, expected in ((ALICE, ["embedder", "tiny"]), (BOB, ["embedder"])):
                answer = await b.http.get(b.url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
                assert sorted(m["id"] for m in (await answer.json())["data"]) == expected
            forbidden = await b.post("/v1/chat/completions", CHAT, key=BOB)
            absent = await b.post("/v1/chat/completions", {**CHAT, "model": "nope"}, key=BOB)
            assert forbidden.status == absent.status == 404
            assert (await forbidden.json())["error"]["message"].replace("tiny", "X") == (await absent.json())[
                "error"
            ]["message"].replace("nope", "X")
            assert b.engine.received == []

    run(scenario)


def test_an_answer_passes_through_counted_and_audited_without_prompt_or_key(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with bed(tmp_path) as b:
            answer = await b.post("/v1/chat/completions", CHAT)
            assert answer.status == 200
            body = await answer.json()
            assert body["choices"][0]["message"]["content"] == "tok " * 5
            assert b.engine.received[0]["messages"] == CHAT["messages"]
            assert "Authorization" not in b.engine.headers[0]  # the client's key stays at the gateway
            embed = await b.post("/v1/embeddings", {"model": "embedder", "input": ["a", "b"]}, key=BOB)
            assert (await embed.json())["usage"]["prompt_tokens"] == 6
            chat_line, embed_line = b.lines()
            assert (
                chat_line["key"] == "alice"
                and chat_line["model"] == "tiny"
                and chat_line["service"] == "tiny-svc"
            )
            assert (
                chat_line["status"] == 200
                and chat_line["completion_tokens"] == 5
                and chat_line["prompt_tokens"] > 0
            )
            assert embed_line["key"] == "bob" and embed_line["prompt_tokens"] == 6
            audit = b.audit.getvalue()
            assert (
                "secret prompt" not in audit
                and "tok tok" not in audit
                and ALICE not in audit
                and BOB not in audit
            )
            metrics = await (await b.http.get(b.url + "/metrics")).text()
            assert 'inferator_gateway_tokens_total{key="alice",kind="completion",model="tiny"} 5.0' in metrics
            assert 'inferator_gateway_requests_total{code="200",key="bob",model="embedder"} 1.0' in metrics

    run(scenario)


def test_a_stream_arrives_as_the_engine_writes_it_with_usage_counted(tmp_path: Path) -> None:
    async def scenario() -> None:
        engine = FakeEngine(models=["tiny", "embedder"], tokens=5, hold_stream=asyncio.Event())
        async with bed(tmp_path, engine=engine) as b:
            answer = await b.post("/v1/chat/completions", {**CHAT, "stream": True})
            assert answer.headers["Content-Type"].startswith("text/event-stream")
            first = await asyncio.wait_for(answer.content.readuntil(b"\n\n"), 10)
            assert b"tok" in first and engine.finished_streams == 0  # not held back until the end
            engine.hold_stream.set()  # type: ignore[union-attr]
            rest = (await answer.read()).decode()
            events = [e for e in (first.decode() + rest).split("\n\n") if e]
            assert events[-1] == "data: [DONE]"
            assert all('"usage"' not in e for e in events)  # asked for by the gateway, not shown
            assert engine.received[-1]["stream_options"] == {"include_usage": True}
            asked = await b.post(
                "/v1/completions",
                {"model": "tiny", "prompt": "x", "stream": True, "stream_options": {"include_usage": True}},
            )
            assert '"usage"' in await asked.text()  # the client asked: it gets it
            lines = b.lines()
            assert [line["completion_tokens"] for line in lines] == [5, 5]
            assert all(line["stream"] for line in lines)

    run(scenario)


def test_over_quota_is_429_with_retry_after_counted_from_real_usage(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with bed(tmp_path, alice={"tokens_per_minute": 10}) as b:
            assert (await b.post("/v1/chat/completions", {**CHAT, "stream": True})).status == 200
            refused = await b.post("/v1/chat/completions", CHAT)
            assert refused.status == 429
            assert 1 <= int(refused.headers["Retry-After"]) <= 60
            assert len(b.engine.received) == 1
            other = await b.post("/v1/embeddings", {"model": "embedder", "input": "x"}, key=BOB)
            assert other.status == 200  # quotas are per key

    run(scenario)


def test_a_client_that_hangs_up_cancels_the_engine_request(tmp_path: Path) -> None:
    async def scenario() -> None:
        engine = FakeEngine(models=["tiny", "embedder"], tokens=5, hold_stream=asyncio.Event())
        async with bed(tmp_path, engine=engine) as b:
            answer = await b.post("/v1/chat/completions", {**CHAT, "stream": True})
            await answer.content.readuntil(b"\n\n")
            answer.close()  # the client goes away mid-stream
            for _ in range(100):
                if engine.cancelled:
                    break
                await asyncio.sleep(0.05)
            assert engine.cancelled == 1 and engine.finished_streams == 0
            for _ in range(100):
                if b.lines():
                    break
                await asyncio.sleep(0.05)
            assert b.lines()[0]["status"] == 499

    run(scenario)


class ScalingCatalog(StaticCatalog):
    """The cluster seam as a double: no replica until `scale_up` is asked, ready `delay` later."""

    def __init__(self, config: GatewayConfig, upstream: str, delay: float | None) -> None:
        super().__init__(config)
        self.upstream, self.delay, self.ready, self.scaled = upstream, delay, False, 0
        self.event = asyncio.Event()

    def route(self, model: str) -> Route | None:
        found = super().route(model)
        if found is None or self.ready:
            return found
        return Route(found.model, found.service, ())

    async def scale_up(self, route: Route) -> None:
        self.scaled += 1
        if self.scaled == 1 and self.delay is not None:
            asyncio.get_running_loop().call_later(self.delay, self._ready)

    def _ready(self) -> None:
        self.ready = True
        self.event.set()

    async def changed(self, timeout: float) -> None:
        with suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), timeout)


def test_requests_to_a_service_at_zero_are_held_until_a_replica_is_ready(tmp_path: Path) -> None:
    async def scenario() -> None:
        made: list[ScalingCatalog] = []

        def catalog(config: GatewayConfig, upstream: str) -> ScalingCatalog:
            made.append(ScalingCatalog(config, upstream, delay=0.5))
            return made[0]

        async with bed(tmp_path, catalog=catalog) as b:
            answers = await asyncio.gather(*(b.post("/v1/chat/completions", CHAT) for _ in range(20)))
            assert [a.status for a in answers] == [200] * 20
            assert made[0].scaled >= 1
            assert min(line["held_ms"] for line in b.lines()) >= 400

    run(scenario)


def test_a_hold_that_outlasts_its_bound_is_503_with_retry_after(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with bed(
            tmp_path, catalog=lambda c, u: ScalingCatalog(c, u, delay=None), hold_seconds=0.3
        ) as b:
            answer = await b.post("/v1/chat/completions", CHAT)
            assert answer.status == 503 and int(answer.headers["Retry-After"]) >= 1
            assert b.engine.received == []

    run(scenario)


def test_the_openai_client_streams_through_and_reads_our_errors(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with bed(tmp_path, alice={"tokens_per_minute": 30}) as b:
            client = openai.AsyncOpenAI(base_url=b.url + "/v1", api_key=ALICE, max_retries=0)
            stream = await client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text == "tok " * 5
            assert [m.id async for m in client.models.list()] == ["embedder", "tiny"]
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(
                    model="nope", messages=[{"role": "user", "content": "x"}]
                )
            with pytest.raises(openai.AuthenticationError):
                bad = openai.AsyncOpenAI(base_url=b.url + "/v1", api_key="sk-nope", max_retries=0)
                await bad.models.list()
            for _ in range(4):  # 9 tokens so far, 6 each: over 30 after the fourth
                await client.completions.create(model="tiny", prompt="x")
            with pytest.raises(openai.RateLimitError):
                await client.completions.create(model="tiny", prompt="x")

    run(scenario)


def test_prefix_affinity_keeps_a_prefix_on_one_replica_until_it_is_loaded() -> None:
    router = routing.Router("prefix")
    replicas = ["http://a", "http://b", "http://c"]
    prefixes = [f"system prompt {i}" for i in range(30)]
    first = {p: router.pick(replicas, p) for p in prefixes}
    assert {p: router.pick(replicas, p) for p in prefixes} == first
    assert len(set(first.values())) == 3  # prefixes spread over the replicas
    # Losing a replica moves only its own prefixes.
    moved = [p for p in prefixes if first[p] != "http://c" and router.pick(replicas[:2], p) != first[p]]
    assert moved == []
    # A replica far above its fair share stops taking its prefixes.
    hot = first[prefixes[0]]
    router.in_flight[hot] = 10
    assert router.pick(replicas, prefixes[0]) != hot
    assert routing.Router("least-loaded").pick(replicas, prefixes[0]) in replicas


def test_prompt_prefix_reads_the_start_of_chat_and_completion_requests() -> None:
    chat = {"messages": [{"role": "system", "content": "S" * 300}, {"role": "user", "content": "q"}]}
    assert routing.prompt_prefix(chat) == "S" * routing.PREFIX_CHARS
    assert routing.prompt_prefix({"prompt": ["abc", "def"]}) == "abc"
    assert routing.prompt_prefix({"input": "text"}) == "text"


def test_an_event_stream_split_anywhere_forwards_whole_events_and_reads_usage() -> None:
    raw = (
        b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\n'
        b"data: [DONE]\n\n"
    )
    for cut in range(1, len(raw)):
        stream = usage.EventStream(drop_usage_event=True)
        out = stream.feed(raw[:cut]) + stream.feed(raw[cut:]) + stream.flush()
        assert out == raw.replace(raw.split(b"\n\n")[1] + b"\n\n", b"")
        assert (stream.usage.prompt_tokens, stream.usage.completion_tokens, stream.usage.charged) == (3, 1, 4)


def test_keys_are_reread_when_their_file_changes_and_quotas_turn_with_the_window(tmp_path: Path) -> None:
    key_file = tmp_path / "k"
    key_file.write_text("old-key")
    policy = KeyPolicy(id="k", file=str(key_file), tokens_per_minute=100)
    ring = KeyRing([policy])
    assert ring.lookup("old-key", now=0.0) is policy
    key_file.write_text("new-key")
    import os

    os.utime(key_file, (1e9, 1e9))
    assert ring.lookup("new-key", now=1.0) is None  # not re-read before the interval
    assert ring.lookup("new-key", now=10.0) is policy and ring.lookup("old-key", now=10.0) is None
    quotas = Quotas(replicas=2)  # each of 2 replicas enforces half
    quotas.charge(policy, 50, now=120.0)
    assert quotas.retry_after(policy, now=130.0) == 50
    assert quotas.retry_after(policy, now=180.0) is None  # a new minute


def test_readiness_waits_for_the_first_listing_and_liveness_does_not(tmp_path: Path) -> None:
    import threading

    class Listing(StaticCatalog):
        synced = threading.Event()

    async def scenario() -> None:
        async with bed(tmp_path, catalog=lambda c, _u: Listing(c)) as b:
            assert (await b.http.get(b.url + "/healthz")).status == 503
            assert (await b.http.get(b.url + "/livez")).status == 200
            Listing.synced.set()
            assert (await b.http.get(b.url + "/healthz")).status == 200

    run(scenario)


def test_rerank_is_routed_by_model_on_both_of_vllms_paths_and_counted(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with bed(tmp_path) as b:
            for path in ("/v1/rerank", "/rerank"):
                answer = await b.post(
                    path, {"model": "embedder", "query": "q", "documents": ["a", "b"]}, key=BOB
                )
                assert answer.status == 200
                assert [r["index"] for r in (await answer.json())["results"]] == [0, 1]
            assert [line["path"] for line in b.lines()] == ["/v1/rerank", "/rerank"]
            metrics = await (await b.http.get(b.url + "/metrics")).text()
            assert 'inferator_gateway_requests_total{code="200",key="bob",model="embedder"} 2.0' in metrics

    run(scenario)


def test_a_client_that_leaves_at_done_is_not_an_engine_error(tmp_path: Path) -> None:
    """The openai client closes as soon as it reads `[DONE]`; the body's end may not be out yet."""

    async def scenario() -> None:
        engine = FakeEngine(models=["tiny", "embedder"], tokens=3, linger_s=0.3)
        # Without handler cancellation the gateway sees the hang-up only when it writes the body's
        # end, the order in which the race happens in production.
        async with bed(tmp_path, engine=engine, cancel=False) as b:
            answer = await b.post("/v1/completions", {"model": "tiny", "prompt": "x", "stream": True})
            while b"[DONE]" not in await answer.content.readuntil(b"\n\n"):
                pass
            answer.close()
            for _ in range(100):
                if b.lines():
                    break
                await asyncio.sleep(0.05)
            (line,) = b.lines()
            assert line["status"] == 499 and line["completion_tokens"] == 3, line  # not a 502 of the engine
            again = await b.post("/v1/completions", {"model": "tiny", "prompt": "x"})
            assert again.status == 200  # the gateway carries on

    run(scenario)
