"""The builtin analysis provider of `onnxship up`: the local router's /metrics.

Over each interval the plan asks for, the canary's counters are read at both ends and their
difference is judged by ``plan.analysis.evaluate``; the verdict is observed on a later tick
(the controller's counterpart is ``controller.router_metrics`` and ``_measure_if_due``). The
same scrape gives the live counters per revision that the view shows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from onnxship.api import Analysis
from onnxship.plan.analysis import AnalysisRequest, Verdict, evaluate
from onnxship.router.metrics_source import (
    Counters,
    counters_from_text,
    measurements_between,
    revision_stats,
)

from . import processes
from .view import RevisionStats


@dataclass
class Window:
    """One analysis interval: the canary's counters when it opened."""

    request: AnalysisRequest
    opened: float
    baseline: Counters


class RouterAnalysis:
    """One canary window at a time; its verdict waits for the next tick's observe."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint  # the router's
        self.window: Window | None = None
        self.verdict: Verdict | None = None  # the latest, for the plan to observe
        self.stats: dict[str, RevisionStats] = {}

    def measure(self, request: AnalysisRequest | None, analysis: Analysis, now: datetime) -> None:
        """Measure the canary over each interval the plan asks for, and judge it."""
        if request is None:
            self.window = None
            return
        if self.window is None or self.window.request != request:
            self.window = Window(request, time.monotonic(), self._counters(request))
            return
        if time.monotonic() - self.window.opened < request.interval_seconds:
            return
        counters = self._counters(request)
        measurements = measurements_between(
            request.revision, self.window.baseline, counters, time.monotonic() - self.window.opened
        )
        self.window = Window(request, time.monotonic(), counters)
        if measurements is None:
            return
        self.verdict = evaluate(
            analysis, measurements, now, request.mirroring, request.serving
        )

    def refresh_stats(self) -> None:
        """The live counters per revision (requests, errors, latency, mirrored)."""
        text = self._scrape()
        if not text:
            return
        self.stats = {
            rev: RevisionStats(
                requests=raw["requests"],
                errors=raw["errors"],
                p50_ms=raw["p50_ms"],
                p99_ms=raw["p99_ms"],
                mirrored=raw["mirrored"],
                ttft_p99_ms=raw.get("ttft_p99_ms"),
                token_agreement=raw.get("token_agreement"),
            )
            for rev, raw in revision_stats(text).items()
        }

    def _scrape(self) -> str:
        code, body = processes.http_get(f"{self.endpoint}/metrics", timeout=1.0)
        return body.decode(errors="replace") if code == 200 else ""

    def _counters(self, request: AnalysisRequest) -> Counters:
        return counters_from_text(self._scrape(), request.revision)
