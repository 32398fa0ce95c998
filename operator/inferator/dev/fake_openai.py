"""A fast fake OpenAI-compatible engine: the gateway's tests and benchmark talk to it.

It answers like vLLM does (the same routes, usage in answers, a final usage event when a stream
asks for it, `data: [DONE]`), with fixed-length answers so a benchmark measures the proxy and
not the generation. Tests can pause a stream (`hold_stream`) to see what arrives before the end,
and read what it received and which streams the client abandoned.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class FakeEngine:
    models: list[str] = field(default_factory=lambda: ["tiny"])
    tokens: int = 16
    chunk_delay_s: float = 0.0
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    cancelled: int = 0
    finished_streams: int = 0
    hold_stream: asyncio.Event | None = None  # when set up, a stream pauses after its first chunk
    record: bool = True
    linger_s: float = 0.0  # after `[DONE]`, before ending the body (clients close on [DONE])

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/health", self.health)
        for path in ("/v1/chat/completions", "/v1/completions"):
            app.router.add_post(path, self.generate)
        app.router.add_post("/v1/embeddings", self.embed)
        app.router.add_post("/v1/rerank", self.rerank)
        app.router.add_post("/rerank", self.rerank)
        return app

    async def health(self, _request: web.Request) -> web.Response:
        return web.Response(text="")

    async def list_models(self, _request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    def _usage(self, payload: dict[str, Any]) -> dict[str, int]:
        prompt = len(json.dumps(payload.get("messages", payload.get("prompt", ""))).split())
        return {
            "prompt_tokens": prompt,
            "completion_tokens": self.tokens,
            "total_tokens": prompt + self.tokens,
        }

    async def generate(self, request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        if self.record:
            self.received.append(payload)
            self.headers.append(dict(request.headers))
        if payload.get("model") not in self.models:
            return web.json_response({"error": {"message": "no such model"}}, status=404)
        chat = request.path.endswith("chat/completions")
        kind = "chat.completion" if chat else "text_completion"
        created = int(time.time())
        if not payload.get("stream"):
            choice: dict[str, Any] = (
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "tok " * self.tokens},
                    "finish_reason": "length",
                }
                if chat
                else {"index": 0, "text": "tok " * self.tokens, "finish_reason": "length"}
            )
            body = {"id": "fake", "object": kind, "created": created, "model": payload["model"],
                    "choices": [choice], "usage": self._usage(payload)}  # fmt: skip
            return web.json_response(body)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        try:
            for i in range(self.tokens):
                delta = {"index": 0, "delta": {"content": "tok "}} if chat else {"index": 0, "text": "tok "}
                if i == self.tokens - 1:
                    delta["finish_reason"] = "length"
                chunk = {"id": "fake", "object": kind + ".chunk", "created": created, "model": payload["model"],
                         "choices": [delta]}  # fmt: skip
                await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                if i == 0 and self.hold_stream is not None:
                    await self.hold_stream.wait()
                if self.chunk_delay_s:
                    await asyncio.sleep(self.chunk_delay_s)
            if (payload.get("stream_options") or {}).get("include_usage"):
                final = {"id": "fake", "object": kind + ".chunk", "created": created, "model": payload["model"],
                         "choices": [], "usage": self._usage(payload)}  # fmt: skip
                await response.write(b"data: " + json.dumps(final).encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            if self.linger_s:
                await asyncio.sleep(self.linger_s)
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled += 1
            raise
        self.finished_streams += 1
        return response

    async def embed(self, request: web.Request) -> web.Response:
        payload = await request.json()
        if self.record:
            self.received.append(payload)
        inputs = payload.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(items))]
        usage = {"prompt_tokens": 3 * len(items), "total_tokens": 3 * len(items)}
        return web.json_response(
            {"object": "list", "data": data, "model": payload.get("model"), "usage": usage}
        )

    async def rerank(self, request: web.Request) -> web.Response:
        payload = await request.json()
        if self.record:
            self.received.append(payload)
        results = [
            {"index": i, "relevance_score": 1.0 / (i + 1)} for i, _ in enumerate(payload.get("documents", []))
        ]
        return web.json_response({"id": "fake", "model": payload.get("model"), "results": results,
                                  "usage": {"total_tokens": 7}})  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--model", action="append", default=None)
    args = parser.parse_args(argv)
    engine = FakeEngine(models=args.model or ["tiny"], tokens=args.tokens, record=False)
    web.run_app(engine.app(), host="127.0.0.1", port=args.port, print=None, access_log=None,
                handler_cancellation=True)  # fmt: skip


if __name__ == "__main__":
    main()
