"""The canary analysis verdict: measurements in, pass / fail / inconclusive out.

Pure: whoever measures (the router's /metrics through ``onnxship.router.metrics_source``, or
Prometheus) hands over a ``Measurements``; the verdict never writes status itself, the rollout
counts it (``plan.rollout``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from onnxship.api import Analysis


class Result(StrEnum):
    passed = "pass"
    failed = "fail"
    inconclusive = "inconclusive"


@dataclass(frozen=True)
class GenerationFigures:
    """The canary's streamed answers in one environment over one interval."""

    environment: str
    generations: int = 0  # streamed answers that reached their first token
    ttft_p99_ms: float | None = None
    itl_p99_ms: float | None = None


@dataclass(frozen=True)
class Measurements:
    """What the canary did over one interval (counts are deltas over the interval)."""

    revision: str
    requests: int = 0  # requests the canary answered: served and mirrored
    errors: int = 0  # of those, answered with a 5xx or not at all
    latency_p99_ms: float | None = None
    comparisons: int = 0  # mirrored requests whose outputs were compared with stable's
    cosine: float | None = None  # mean cosine similarity over the comparisons
    top1: float | None = None  # share of comparisons with the same argmax
    max_abs_diff: float | None = None
    interval_seconds: float = 0.0
    # (environment, requests, errors) per hardware pool, when the canary serves several
    environments: tuple[tuple[str, int, int], ...] = ()
    # Causal LMs: the users' streamed answers (time to first token, inter-token latency) ...
    generations: int = 0
    ttft_p99_ms: float | None = None
    itl_p99_ms: float | None = None
    generation_environments: tuple[GenerationFigures, ...] = ()  # when several pools
    # ... and mirrored generations: the canary's greedy answer against stable's, token by token
    token_comparisons: int = 0
    token_agreement: float | None = None  # mean share of stable's positions matched

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


@dataclass(frozen=True)
class AnalysisRequest:
    """What the shell should measure next: the canary, and whether agreement is required."""

    revision: str
    mirroring: bool
    interval_seconds: float
    # the canary answers users (weight above 0): its answers' latencies can be judged
    serving: bool = False


@dataclass(frozen=True)
class Verdict:
    revision: str
    result: Result
    message: str
    measured_at: datetime
    measurements: Measurements

    @property
    def agreement(self) -> float | None:
        return self.measurements.cosine


def agreement_value(m: Measurements, metric: str) -> float | None:
    if metric == "tokens":
        return m.token_agreement
    return m.top1 if metric == "top1" else m.cosine


def default_metric(m: Measurements) -> str:
    """The agreement status shows without a gate: tokens for generations, else cosine."""
    return "tokens" if m.token_comparisons and not m.comparisons else "cosine"


def comparisons_for(m: Measurements, metric: str) -> int:
    """How many mirrored answers the agreement ``metric`` was measured on."""
    return m.token_comparisons if metric == "tokens" else m.comparisons


# (Analysis field, Measurements / GenerationFigures attribute, what the message calls it)
TOKEN_LATENCIES = (
    ("max_time_to_first_token_p99_ms", "ttft_p99_ms", "p99 time to first token"),
    ("max_inter_token_latency_p99_ms", "itl_p99_ms", "p99 inter-token latency"),
)


def _token_latency_problems(analysis: Analysis, m: Measurements) -> list[str]:
    """Figures of streamed answers above their limit, overall and per environment; a pool
    with fewer than ``min_requests`` generations is not judged on its own."""
    problems = []
    for field, attr, name in TOKEN_LATENCIES:
        limit = getattr(analysis, field)
        if limit is None:
            continue
        value = getattr(m, attr)
        if m.generations >= analysis.min_requests and value is not None and value > limit:
            problems.append(f"{name} {value:.1f} ms above {limit:g} ms")
        for env in m.generation_environments:
            value = getattr(env, attr)
            if env.generations >= analysis.min_requests and value is not None and value > limit:
                problems.append(
                    f"environment {env.environment}: {name} {value:.1f} ms above {limit:g} ms"
                )
    return problems


def evaluate(
    analysis: Analysis,
    m: Measurements,
    measured_at: datetime,
    mirroring: bool = False,
    serving: bool = False,
) -> Verdict:
    """Judge one interval. Too few requests is inconclusive, never a pass.

    A thin sample is inconclusive whatever it contains (one 500 in three requests says
    little), so neither a pass nor a failure is counted from it. With ``mirroring`` and an
    agreement threshold, a pass also needs ``min_requests`` compared outputs (generations
    compared token by token for ``metric: tokens``). With ``serving`` (the canary answers
    users) and a time-to-first-token or inter-token limit, a pass also needs
    ``min_requests`` streamed answers that reached their first token: a canary whose
    streams were never timed has not shown that it is fast enough.
    """

    def verdict(result: Result, message: str) -> Verdict:
        return Verdict(m.revision, result, message, measured_at, m)

    gate = analysis.min_output_agreement
    if m.requests < analysis.min_requests:
        return verdict(
            Result.inconclusive,
            f"{m.requests} canary requests in the interval, fewer than {analysis.min_requests}",
        )
    problems = []
    rate = m.error_rate or 0.0
    if rate > analysis.max_error_rate:
        problems.append(f"error rate {rate:.2%} above {analysis.max_error_rate:.2%}")
    # One pool failing fails the revision everywhere, even when the others dilute its rate.
    for env, env_requests, env_errors in m.environments:
        env_rate = env_errors / env_requests if env_requests else 0.0
        if env and env_requests >= analysis.min_requests and env_rate > analysis.max_error_rate:
            problems.append(
                f"environment {env}: error rate {env_rate:.2%} above "
                f"{analysis.max_error_rate:.2%}"
            )
    limit = analysis.max_latency_p99_ms
    if limit is not None and m.latency_p99_ms is not None and m.latency_p99_ms > limit:
        problems.append(f"p99 latency {m.latency_p99_ms:.1f} ms above {limit:g} ms")
    problems += _token_latency_problems(analysis, m)
    compared = comparisons_for(m, gate.metric) if gate is not None else 0
    if gate is not None and compared >= analysis.min_requests:
        value = agreement_value(m, gate.metric)
        if value is not None and value < gate.min:
            problems.append(f"output agreement ({gate.metric}) {value:.4f} below {gate.min:g}")
    if problems:
        return verdict(Result.failed, "; ".join(problems))
    if gate is not None and mirroring and compared < analysis.min_requests:
        what = "mirrored comparisons"
        if gate.metric == "tokens":
            what = "mirrored generations compared"
        return verdict(
            Result.inconclusive,
            f"{compared} {what} in the interval, fewer than {analysis.min_requests}",
        )
    timed = [name for field, _, name in TOKEN_LATENCIES if getattr(analysis, field) is not None]
    if timed and serving and m.generations < analysis.min_requests:
        return verdict(
            Result.inconclusive,
            f"{m.generations} streamed canary answers reached a first token in the interval, "
            f"fewer than {analysis.min_requests} to judge the {' and '.join(timed)}",
        )
    parts = [f"{m.requests} requests", f"error rate {rate:.2%}"]
    if m.latency_p99_ms is not None:
        parts.append(f"p99 {m.latency_p99_ms:.1f} ms")
    if m.generations and m.ttft_p99_ms is not None:
        parts.append(f"time to first token p99 {m.ttft_p99_ms:.1f} ms")
    if m.generations and m.itl_p99_ms is not None:
        parts.append(f"inter-token p99 {m.itl_p99_ms:.1f} ms")
    if m.comparisons and m.cosine is not None:
        parts.append(f"cosine {m.cosine:.4f} over {m.comparisons} comparisons")
    if m.token_comparisons and m.token_agreement is not None:
        parts.append(
            f"token agreement {m.token_agreement:.4f} over {m.token_comparisons} generations"
        )
    return verdict(Result.passed, ", ".join(parts))


class MetricsSource(Protocol):
    """Where measurements come from (the router's /metrics, Prometheus): a port."""

    async def measure(self, request: AnalysisRequest) -> Measurements | None:
        """What ``request.revision`` did since the previous call; None if not known yet."""
        ...
