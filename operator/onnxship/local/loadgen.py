"""A small load generator for the demo and tests: KServe v2 JSON requests at a steady rate.

It speaks the inference protocol a user's client speaks (POST /v2/models/<name>/infer) to the
router, so what it counts is what users see: answers, errors by status, latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

DEMO_VOCAB = 8192


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


@dataclass
class LoadStats:
    sent: int = 0
    ok: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return self.sent - self.ok

    @property
    def error_rate(self) -> float:
        return self.errors / self.sent if self.sent else 0.0

    def percentile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def copy(self) -> LoadStats:
        return LoadStats(self.sent, self.ok, Counter(self.statuses), list(self.latencies_ms))


async def _worker(
    session: aiohttp.ClientSession,
    url: str,
    rate: float,
    stats: LoadStats,
    stop: threading.Event,
    rng: random.Random,
) -> None:
    interval = 1.0 / rate if rate > 0 else 0.0
    next_at = time.monotonic()
    while not stop.is_set():
        body = token_request(rng)
        started = time.monotonic()
        status = 0
        try:
            async with session.post(url, json=body) as resp:
                await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError):
            status = 0
        stats.sent += 1
        stats.statuses[status] += 1
        if status == 200:
            stats.ok += 1
            stats.latencies_ms.append((time.monotonic() - started) * 1000)
            if len(stats.latencies_ms) > 20_000:
                del stats.latencies_ms[:10_000]
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
) -> None:
    """Send requests to ``url`` at about ``rate`` per second until ``stop`` is set."""
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        workers = [
            asyncio.create_task(
                _worker(session, url, rate / concurrency, stats, stop, random.Random(seed + i))
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

    def __init__(self, url: str, rate: float = 30.0, concurrency: int = 4, seed: int = 0) -> None:
        self.url = url
        self.rate = rate
        self.concurrency = concurrency
        self.seed = seed
        self.stats = LoadStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LoadGenerator:
        self._thread = threading.Thread(
            target=lambda: asyncio.run(
                generate(self.url, self.rate, self._stop, self.stats, self.concurrency, self.seed)
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
