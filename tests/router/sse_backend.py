"""A language-model server stand-in for router tests: OpenAI-shaped answers, streamed as
server-sent events with known gaps, that records when it sent each token and whether its
client went away."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKENS = ["Hello", ",", " streaming", " world", "!"]


@dataclass
class SseBackend:
    name: str
    tokens: list[str] = field(default_factory=lambda: list(TOKENS))
    first_delay: float = 0.0  # before the first token (after the role-only chunk; whole answers)
    gap: float = 0.02  # between tokens
    usage: bool = True  # a last chunk with usage.completion_tokens
    die_after: int | None = None  # close the connection after this many tokens
    ids: bool = False  # send token ids (choices[].token_ids), as some servers do
    port: int = 0
    runner: web.AppRunner | None = field(default=None, repr=False)
    received: list[float] = field(default_factory=list)  # perf_counter at each request
    sent: list[float] = field(default_factory=list)  # perf_counter at each token sent
    requests: list[dict[str, Any]] = field(default_factory=list)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "cmpl-1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def token_ids(self) -> list[int]:
        return [sum(map(ord, t)) for t in self.tokens]  # a stand-in vocabulary

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.received.append(time.perf_counter())
        doc = await request.json()
        self.requests.append(doc)
        if not doc.get("stream"):
            await asyncio.sleep(self.first_delay)  # a whole answer waits for its last token
            return web.json_response(
                {
                    "id": "cmpl-1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "m",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(self.tokens)},
                            "finish_reason": "stop",
                            **({"token_ids": self.token_ids()} if self.ids else {}),
                        }
                    ],
                    "usage": {
                        "prompt_tokens": 3,
                        "completion_tokens": len(self.tokens),
                        "total_tokens": 3 + len(self.tokens),
                    },
                },
                headers={"x-backend": self.name},
            )
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "x-backend": self.name,
            }
        )
        await resp.prepare(request)

        async def event(doc: Any) -> None:
            await resp.write(b"data: " + json.dumps(doc).encode() + b"\n\n")

        try:
            await event(self.chunk({"role": "assistant", "content": ""}))
            await asyncio.sleep(self.first_delay)
            for i, token in enumerate(self.tokens):
                if i:
                    await asyncio.sleep(self.gap)
                if self.die_after is not None and i == self.die_after:
                    assert request.transport is not None
                    request.transport.close()  # the server dies mid-stream
                    return resp
                doc = self.chunk({"content": token})
                if self.ids:
                    doc["choices"][0]["token_ids"] = [self.token_ids()[i]]
                await event(doc)
                self.sent.append(time.perf_counter())
            await event(self.chunk({}, "stop"))
            if self.usage:
                n = len(self.tokens)
                usage = {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": 3 + n}
                await event({**self.chunk({}), "choices": [], "usage": usage})
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except asyncio.CancelledError:
            self.cancelled.set()  # what a real server stops generating on
            raise
        return resp


async def start_sse_backend(name: str, **kw: Any) -> SseBackend:
    """Serve a backend on a free port of 127.0.0.1 (``runner.cleanup()`` stops it)."""
    b = SseBackend(name, **kw)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", b.chat)
    # handler_cancellation: the backend learns that its client left, as a server must
    b.runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await b.runner.setup()
    await web.TCPSite(b.runner, "127.0.0.1", 0).start()
    b.port = int(b.runner.addresses[0][1])
    return b
