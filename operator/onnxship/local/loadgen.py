"""A small load generator for the demo and tests: KServe v2 JSON requests at a steady rate,
or, for a causal LM, streamed chat completions (OpenAI's API).

It speaks the protocol a user's client speaks (POST /v2/models/<name>/infer, or POST
/v1/chat/completions with ``stream: true``) to the router, so what it counts is what users
see: answers, errors by status, latency, and for streams the time to their first token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from onnxship.router.balance import REVISION_HEADER

DEMO_VOCAB = 8192
# Short, varied prompts: the answers of a greedy canary and of stable are compared when mirrored.
PROMPTS = (
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "Write one sentence about the sea.",
    "What is two plus two?",
    "Say hello in Spanish.",
    "Why is the sky blue? Answer briefly.",
    "List two fruits that are red.",
    "What day comes after Monday?",
)


def token_request(rng: random.Random, seq: int = 16, vocab: int = DEMO_VOCAB) -> dict[str, object]:
    """One sentence of random token ids (some padding), as a v2 JSON inference request."""
    length = rng.randint(seq // 2, seq)
    ids = [rng.randrange(1, vocab) for _ in range(length)] + [0] * (seq - length)
    mask = [1] * length + [0] * (seq - length)
    return {
        "inputs": [
            {"name": "input_ids", "shape": [1, seq], "datatype": "INT64", "data": ids},
            {"name": "attention_mask", "shape": [1, seq], "datatype": "INT64", "data": mask},
        ]
    }


def chat_request(rng: random.Random, model: str, max_tokens: int = 16) -> dict[str, object]:
    """One streamed, greedy chat request on a random prompt (OpenAI's API)."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
        "stream": True,
        "temperature": 0,
        "max_tokens": max_tokens,
    }


@dataclass
class LoadStats:
    sent: int = 0
    ok: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)  # streams: to the first token
    # answers by the revision that gave them (the router's onnxship-revision header)
    by_revision: Counter[str] = field(default_factory=Counter)
    ttft_by_revision: dict[str, list[float]] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return self.sent - self.ok

    @property
    def error_rate(self) -> float:
        return self.errors / self.sent if self.sent else 0.0

    def percentile(self, q: float, ttft: bool = False, revision: str = "") -> float | None:
        values = self.ttft_ms if ttft else self.latencies_ms
        if revision:
            values = self.ttft_by_revision.get(revision, [])
        if not values:
            return None
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def copy(self) -> LoadStats:
        return LoadStats(
            self.sent,
            self.ok,
            Counter(self.statuses),
            list(self.latencies_ms),
            list(self.ttft_ms),
            Counter(self.by_revision),
            {rev: list(values) for rev, values in self.ttft_by_revision.items()},
        )


async def _send(
    session: aiohttp.ClientSession, url: str, body: dict[str, object], started: float
) -> tuple[int, float | None, str]:
    """Status of one request, read to its end, when a streamed answer's first token came
    (a ``data:`` event whose delta carries text), and the revision that answered."""
    first: float | None = None
    async with session.post(url, json=body) as resp:
        revision = resp.headers.get(REVISION_HEADER, "")
        if not body.get("stream"):
            await resp.read()
            return resp.status, None, revision
        async for line in resp.content:
            if first is None and line.startswith(b"data: {") and _carries_text(line[6:]):
                first = time.monotonic() - started
        return resp.status, first, revision


def _carries_text(event: bytes) -> bool:
    try:
        choices = json.loads(event).get("choices") or [{}]
    except ValueError:
        return False
    delta = choices[0].get("delta") or {}
    return bool(delta.get("content") or choices[0].get("text"))


async def _worker(
    session: aiohttp.ClientSession,
    url: str,
    rate: float,
    stats: LoadStats,
    stop: threading.Event,
    rng: random.Random,
    chat_model: str = "",
) -> None:
    interval = 1.0 / rate if rate > 0 else 0.0
    next_at = time.monotonic()
    while not stop.is_set():
        body = chat_request(rng, chat_model) if chat_model else token_request(rng)
        started = time.monotonic()
        status, first, revision = 0, None, ""
        try:
            status, first, revision = await _send(session, url, body, started)
        except (TimeoutError, aiohttp.ClientError, OSError):
            status = 0
        stats.sent += 1
        stats.statuses[status] += 1
        if status == 200:
            stats.ok += 1
            stats.latencies_ms.append((time.monotonic() - started) * 1000)
            stats.by_revision[revision] += 1
            if first is not None:
                stats.ttft_ms.append(first * 1000)
                stats.ttft_by_revision.setdefault(revision, []).append(first * 1000)
            for values in (stats.latencies_ms, stats.ttft_ms):
                if len(values) > 20_000:
                    del values[:10_000]
        next_at = max(next_at + interval, time.monotonic() - 1.0)
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif status == 0:
            await asyncio.sleep(0.1)  # nothing listening: do not spin


async def generate(
    url: str,
    rate: float,
    stop: threading.Event,
    stats: LoadStats,
    concurrency: int = 4,
    seed: int = 0,
    chat_model: str = "",
) -> None:
    """Send requests to ``url`` at about ``rate`` per second until ``stop`` is set; with
    ``chat_model``, streamed chat completions for that model."""
    timeout = aiohttp.ClientTimeout(total=60 if chat_model else 10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        workers = [
            asyncio.create_task(
                _worker(
                    session,
                    url,
                    rate / concurrency,
                    stats,
                    stop,
                    random.Random(seed + i),
                    chat_model,
                )
            )
            for i in range(concurrency)
        ]
        while not stop.is_set():
            await asyncio.sleep(0.1)
        for task in workers:
            task.cancel()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class LoadGenerator:
    """Runs :func:`generate` on a thread of its own: ``start()``, read ``stats``, ``stop()``."""

    def __init__(
        self,
        url: str,
        rate: float = 30.0,
        concurrency: int = 4,
        seed: int = 0,
        chat_model: str = "",
    ) -> None:
        self.url = url
        self.rate = rate
        self.concurrency = concurrency
        self.seed = seed
        self.chat_model = chat_model  # set: streamed chat completions (``chat_url``)
        self.stats = LoadStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LoadGenerator:
        self._thread = threading.Thread(
            target=lambda: asyncio.run(
                generate(
                    self.url,
                    self.rate,
                    self._stop,
                    self.stats,
                    self.concurrency,
                    self.seed,
                    self.chat_model,
                )
            ),
            name="loadgen",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> LoadStats:
        self._stop.set()
        if self._thread:
            self._thread.join(15)
        return self.stats

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def infer_url(endpoint: str, model: str) -> str:
    return f"{endpoint.rstrip('/')}/v2/models/{model}/infer"


def chat_url(endpoint: str) -> str:
    return f"{endpoint.rstrip('/')}/v1/chat/completions"
