"""The builtin analysis provider: the router's /metrics, scraped twice, as Measurements.

The router counts every answer of every revision (``role`` primary or mirror), keeps
latency histograms and mirror agreement; the difference of two scrapes is what the canary
did over the interval. Counter resets (a restarted router) count from zero.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from onnxship.plan.analysis import AnalysisRequest, GenerationFigures, Measurements

from .metrics import (
    COMPARISONS,
    COSINE,
    DURATION,
    FIRST_DIVERGENCE,
    IDENTICAL,
    ITL,
    MAX_ABS_DIFF,
    OUTPUT_TOKENS,
    REQUESTS,
    STREAMS,
    TOKEN_AGREEMENT,
    TOKEN_COMPARISONS,
    TOP1,
    TTFT,
)

Pairs = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class TokenCounters:
    """Cumulative generation counters of one revision in one environment at one scrape."""

    ttft: Pairs = ()  # time-to-first-token histogram (upper bound, cumulative count)
    itl: Pairs = ()  # inter-token latency histogram
    tokens: float = 0.0
    streams: float = 0.0
    broken: float = 0.0  # streams the backend broke off or stalled

    def __add__(self, other: TokenCounters) -> TokenCounters:
        return TokenCounters(
            _add_pairs(self.ttft, other.ttft),
            _add_pairs(self.itl, other.itl),
            self.tokens + other.tokens,
            self.streams + other.streams,
            self.broken + other.broken,
        )


@dataclass(frozen=True)
class Counters:
    """Cumulative counters of one revision at one scrape."""

    revision: str
    requests: float = 0.0
    errors: float = 0.0
    mirrored: float = 0.0
    buckets: tuple[tuple[float, float], ...] = ()  # (upper bound, cumulative count), sorted
    comparisons: float = 0.0
    cosine_sum: float = 0.0
    top1: float = 0.0
    diff_buckets: tuple[tuple[float, float], ...] = ()  # max-abs-diff histogram, cumulative
    environments: tuple[tuple[str, float, float], ...] = ()  # (environment, requests, errors)
    generation: tuple[tuple[str, TokenCounters], ...] = ()  # per environment, sorted
    # mirrored generations compared as token sequences
    token_comparisons: float = 0.0
    token_agreement_sum: float = 0.0
    identical: float = 0.0
    divergence_buckets: Pairs = ()

    @property
    def tokens(self) -> TokenCounters:
        """Generation counters over all environments."""
        total = TokenCounters()
        for _, t in self.generation:
            total = total + t
        return total


def _add_pairs(
    a: tuple[tuple[float, float], ...], b: tuple[tuple[float, float], ...]
) -> tuple[tuple[float, float], ...]:
    out: dict[float, float] = dict(a)
    for key, value in b:
        out[key] = out.get(key, 0.0) + value
    return tuple(sorted(out.items()))


def summed(parts: Iterable[Counters], revision: str) -> Counters:
    """One revision's counters added up over several scrapes (router replicas, pods)."""
    total = Counters(revision)
    for c in parts:
        envs: dict[str, tuple[float, float]] = {e: (r, x) for e, r, x in total.environments}
        for env, requests, errors in c.environments:
            r0, x0 = envs.get(env, (0.0, 0.0))
            envs[env] = (r0 + requests, x0 + errors)
        gen = dict(total.generation)
        for env, t in c.generation:
            gen[env] = gen.get(env, TokenCounters()) + t
        total = Counters(
            revision,
            total.requests + c.requests,
            total.errors + c.errors,
            total.mirrored + c.mirrored,
            _add_pairs(total.buckets, c.buckets),
            total.comparisons + c.comparisons,
            total.cosine_sum + c.cosine_sum,
            total.top1 + c.top1,
            _add_pairs(total.diff_buckets, c.diff_buckets),
            tuple(sorted((e, r, x) for e, (r, x) in envs.items())),
            tuple(sorted(gen.items())),
            total.token_comparisons + c.token_comparisons,
            total.token_agreement_sum + c.token_agreement_sum,
            total.identical + c.identical,
            _add_pairs(total.divergence_buckets, c.divergence_buckets),
        )
    return total


@dataclass
class _Acc:
    requests: float = 0.0
    errors: float = 0.0
    mirrored: float = 0.0
    buckets: dict[float, float] = field(default_factory=lambda: defaultdict(float))
    comparisons: float = 0.0
    cosine_sum: float = 0.0
    top1: float = 0.0
    diff_buckets: dict[float, float] = field(default_factory=lambda: defaultdict(float))
    envs: dict[str, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0.0, 0.0]))
    gen: dict[str, _GenAcc] = field(default_factory=lambda: defaultdict(_GenAcc))
    token_comparisons: float = 0.0
    token_agreement_sum: float = 0.0
    identical: float = 0.0
    divergence: dict[float, float] = field(default_factory=lambda: defaultdict(float))


@dataclass
class _GenAcc:
    ttft: dict[float, float] = field(default_factory=lambda: defaultdict(float))
    itl: dict[float, float] = field(default_factory=lambda: defaultdict(float))
    tokens: float = 0.0
    streams: float = 0.0
    broken: float = 0.0

    def frozen(self) -> TokenCounters:
        return TokenCounters(
            tuple(sorted(self.ttft.items())),
            tuple(sorted(self.itl.items())),
            self.tokens,
            self.streams,
            self.broken,
        )


def _samples(text: str) -> Iterable[tuple[str, dict[str, str], float]]:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            yield s.name, s.labels, s.value


def parse_counters(text: str) -> dict[str, Counters]:
    """Counters of every revision in one scrape of the router's /metrics."""
    acc: dict[str, _Acc] = defaultdict(_Acc)
    for name, labels, value in _samples(text):
        revision = labels.get("revision", "")
        if not revision:
            continue
        a = acc[revision]
        if name == REQUESTS:
            a.requests += value
            failed = labels.get("code", "").startswith("5")
            if failed:
                a.errors += value
            env = a.envs[labels.get("environment", "")]
            env[0] += value
            env[1] += value if failed else 0.0
            if labels.get("role") == "mirror":
                a.mirrored += value
        elif name == DURATION + "_bucket":
            a.buckets[float(labels["le"])] += value
        elif name == COMPARISONS:
            a.comparisons += value
        elif name == COSINE + "_sum":
            a.cosine_sum += value
        elif name == TOP1:
            a.top1 += value
        elif name == MAX_ABS_DIFF + "_bucket":
            a.diff_buckets[float(labels["le"])] += value
        elif name == TTFT + "_bucket":
            a.gen[labels.get("environment", "")].ttft[float(labels["le"])] += value
        elif name == ITL + "_bucket":
            a.gen[labels.get("environment", "")].itl[float(labels["le"])] += value
        elif name == OUTPUT_TOKENS:
            a.gen[labels.get("environment", "")].tokens += value
        elif name == STREAMS:
            g = a.gen[labels.get("environment", "")]
            g.streams += value
            if labels.get("outcome") == "broken":
                g.broken += value
        elif name == TOKEN_COMPARISONS:
            a.token_comparisons += value
        elif name == TOKEN_AGREEMENT + "_sum":
            a.token_agreement_sum += value
        elif name == IDENTICAL:
            a.identical += value
        elif name == FIRST_DIVERGENCE + "_bucket":
            a.divergence[float(labels["le"])] += value
    return {
        rev: Counters(
            rev,
            a.requests,
            a.errors,
            a.mirrored,
            tuple(sorted(a.buckets.items())),
            a.comparisons,
            a.cosine_sum,
            a.top1,
            tuple(sorted(a.diff_buckets.items())),
            tuple(sorted((e, r, x) for e, (r, x) in a.envs.items())),
            tuple(sorted((e, g.frozen()) for e, g in a.gen.items())),
            a.token_comparisons,
            a.token_agreement_sum,
            a.identical,
            tuple(sorted(a.divergence.items())),
        )
        for rev, a in acc.items()
    }


def counters_from_text(text: str, revision: str) -> Counters:
    return parse_counters(text).get(revision, Counters(revision))


def _delta(after: float, before: float) -> float:
    return after - before if after >= before else after  # a reset counts from zero


def quantile(q: float, buckets: tuple[tuple[float, float], ...]) -> float | None:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) pairs."""
    if not buckets:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            share = (rank - lower_count) / (count - lower_count)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def _bucket_delta(
    after: tuple[tuple[float, float], ...], before: tuple[tuple[float, float], ...]
) -> tuple[tuple[float, float], ...]:
    old = dict(before)
    return tuple((le, _delta(c, old.get(le, 0.0))) for le, c in after)


def measurements_between(
    revision: str, before: Counters, after: Counters, seconds: float
) -> Measurements:
    """What ``revision`` did between two scrapes."""
    reset = after.requests < before.requests
    base = Counters(revision) if reset else before
    p99 = quantile(0.99, _bucket_delta(after.buckets, base.buckets))
    # the histogram bounds the largest difference from above; p99 keeps one outlier out
    diff = quantile(0.99, _bucket_delta(after.diff_buckets, base.diff_buckets))
    comparisons = round(_delta(after.comparisons, base.comparisons))
    cosine_sum = _delta(after.cosine_sum, base.cosine_sum)
    top1 = _delta(after.top1, base.top1)
    before_envs = {e: (r, x) for e, r, x in base.environments}
    environments = tuple(
        (
            env,
            round(_delta(r, before_envs.get(env, (0.0, 0.0))[0])),
            round(_delta(x, before_envs.get(env, (0.0, 0.0))[1])),
        )
        for env, r, x in after.environments
        if env
    )
    return Measurements(
        revision=revision,
        requests=round(_delta(after.requests, base.requests)),
        errors=round(_delta(after.errors, base.errors)),
        latency_p99_ms=p99 * 1000 if p99 is not None else None,
        comparisons=comparisons,
        cosine=cosine_sum / comparisons if comparisons else None,
        top1=top1 / comparisons if comparisons else None,
        max_abs_diff=diff if comparisons else None,
        interval_seconds=seconds,
        environments=environments if len(environments) > 1 else (),
        **_generation_fields(revision, base, after),
    )


def _figures(name: str, after: TokenCounters, before: TokenCounters) -> GenerationFigures:
    ttft, itl = _bucket_delta(after.ttft, before.ttft), _bucket_delta(after.itl, before.itl)
    return GenerationFigures(
        name,
        generations=round(ttft[-1][1]) if ttft else 0,  # the +Inf bucket: streams timed
        ttft_p99_ms=_ms(0.99, ttft),
        itl_p99_ms=_ms(0.99, itl),
    )


def _generation_fields(revision: str, base: Counters, after: Counters) -> dict[str, Any]:
    """The LLM figures of ``Measurements``: users' streams timed (overall and per pool) and
    mirrored generations compared token by token."""
    total = _figures(revision, after.tokens, base.tokens)
    old = dict(base.generation)
    envs = tuple(
        _figures(env, t, old.get(env, TokenCounters())) for env, t in after.generation if env
    )
    n = round(_delta(after.token_comparisons, base.token_comparisons))
    agreement = _delta(after.token_agreement_sum, base.token_agreement_sum)
    return {
        "generations": total.generations,
        "ttft_p99_ms": total.ttft_p99_ms,
        "itl_p99_ms": total.itl_p99_ms,
        "generation_environments": envs if len(envs) > 1 else (),
        "token_comparisons": n,
        "token_agreement": agreement / n if n else None,
    }


@dataclass(frozen=True)
class GenerationMeasurements:
    """What a revision's generations did between two scrapes (all environments, and each)."""

    revision: str
    streams: int = 0
    broken: int = 0
    tokens: int = 0
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    itl_p50_ms: float | None = None
    itl_p99_ms: float | None = None
    environments: tuple[GenerationMeasurements, ...] = ()  # revision field = the environment
    # mirrored generations: the canary's greedy answers against stable's
    comparisons: int = 0
    token_agreement: float | None = None  # mean share of stable's positions matched
    identical: float | None = None  # share of answers identical token for token
    first_divergence_p50: float | None = None


def _ms(q: float, buckets: Pairs) -> float | None:
    value = quantile(q, buckets)
    return value * 1000 if value is not None else None


def _generation(name: str, after: TokenCounters, before: TokenCounters) -> GenerationMeasurements:
    ttft, itl = _bucket_delta(after.ttft, before.ttft), _bucket_delta(after.itl, before.itl)
    return GenerationMeasurements(
        name,
        streams=round(_delta(after.streams, before.streams)),
        broken=round(_delta(after.broken, before.broken)),
        tokens=round(_delta(after.tokens, before.tokens)),
        ttft_p50_ms=_ms(0.5, ttft),
        ttft_p99_ms=_ms(0.99, ttft),
        itl_p50_ms=_ms(0.5, itl),
        itl_p99_ms=_ms(0.99, itl),
    )


def generation_between(revision: str, before: Counters, after: Counters) -> GenerationMeasurements:
    """Time to first token, inter-token latency (p50/p99, ms) and tokens of ``revision``'s
    generations between two scrapes, overall and per environment (when it has several)."""
    reset = after.requests < before.requests
    base = Counters(revision) if reset else before
    old = dict(base.generation)
    envs = tuple(
        _generation(env, t, old.get(env, TokenCounters())) for env, t in after.generation if env
    )
    total = _generation(revision, after.tokens, base.tokens)
    n = round(_delta(after.token_comparisons, base.token_comparisons))
    divergence = _bucket_delta(after.divergence_buckets, base.divergence_buckets)
    return GenerationMeasurements(
        **{
            **total.__dict__,
            "environments": envs if len(envs) > 1 else (),
            "comparisons": n,
            "token_agreement": (
                _delta(after.token_agreement_sum, base.token_agreement_sum) / n if n else None
            ),
            "identical": _delta(after.identical, base.identical) / n if n else None,
            "first_divergence_p50": quantile(0.5, divergence) if n else None,
        }
    )


def revision_stats(text: str) -> dict[str, dict[str, Any]]:
    """Totals per revision since the router started, for dashboards (``onnxship status``);
    revisions that generated text add time to first token, inter-token latency and tokens."""
    out: dict[str, dict[str, Any]] = {}
    for rev, c in parse_counters(text).items():
        p50, p99 = quantile(0.5, c.buckets), quantile(0.99, c.buckets)
        out[rev] = {
            "requests": int(c.requests - c.mirrored),
            "errors": int(c.errors),
            "p50_ms": p50 * 1000 if p50 is not None else None,
            "p99_ms": p99 * 1000 if p99 is not None else None,
            "mirrored": int(c.mirrored),
        }
        if c.token_comparisons:
            out[rev].update(
                token_comparisons=int(c.token_comparisons),
                token_agreement=c.token_agreement_sum / c.token_comparisons,
            )
        gen = c.tokens
        if gen.streams or gen.tokens:
            out[rev].update(
                ttft_p50_ms=_ms(0.5, gen.ttft),
                ttft_p99_ms=_ms(0.99, gen.ttft),
                itl_p99_ms=_ms(0.99, gen.itl),
                tokens=int(gen.tokens),
                streams=int(gen.streams),
            )
    return out


class RouterMetricsSource:
    """``plan.analysis.MetricsSource`` over a router's /metrics (the builtin provider).

    ``measure`` returns None on its first call for a revision (it needs two scrapes) and
    then the measurements since the previous call.
    """

    def __init__(self, metrics_url: str, session: Any, clock: Any) -> None:
        self.metrics_url = metrics_url
        self.session = session  # an aiohttp.ClientSession
        self.clock = clock  # a monotonic clock, e.g. time.monotonic
        self.last: dict[str, tuple[float, Counters]] = {}

    async def scrape(self) -> str:
        async with self.session.get(self.metrics_url) as resp:
            resp.raise_for_status()
            text: str = await resp.text()
            return text

    async def measure(self, request: AnalysisRequest) -> Measurements | None:
        counters = counters_from_text(await self.scrape(), request.revision)
        now = float(self.clock())
        previous = self.last.get(request.revision)
        self.last = {request.revision: (now, counters)}
        if previous is None:
            return None
        at, before = previous
        return measurements_between(request.revision, before, counters, now - at)


# ---------------------------------------------------------------- gatewayAPI mode

SERVE_REQUESTS = "onnxship_inference_requests_total"
SERVE_DURATION = "onnxship_inference_request_duration_seconds"
# a causal LM's server times its own generations (every one, streamed or not)
SERVE_TTFT = "onnxship_llm_time_to_first_token_seconds"
SERVE_ITL = "onnxship_llm_inter_token_latency_seconds"


def serve_counters(texts: Iterable[str], revision: str) -> Counters:
    """Counters of one revision summed over its pods' own /metrics (``onnxship serve``).

    With ``router: gatewayAPI`` no onnxship router sees the traffic, so analysis reads the
    revisions' servers. Their latency histogram holds successful requests only, and there
    are no mirror comparisons. A causal LM's time to first token and inter-token latency
    are the servers' own (queue and prompt included, the network not).
    """
    requests = errors = 0.0
    buckets: dict[float, float] = defaultdict(float)
    gen = _GenAcc()
    for text in texts:
        for name, labels, value in _samples(text):
            if name == SERVE_REQUESTS:
                requests += value
                if labels.get("code", "").startswith("5"):
                    errors += value
            elif name == SERVE_DURATION + "_bucket":
                buckets[float(labels["le"])] += value
            elif name == SERVE_TTFT + "_bucket":
                gen.ttft[float(labels["le"])] += value
            elif name == SERVE_ITL + "_bucket":
                gen.itl[float(labels["le"])] += value
    generation = (("", gen.frozen()),) if gen.ttft else ()
    return Counters(
        revision, requests, errors, 0.0, tuple(sorted(buckets.items())), generation=generation
    )


class ServeMetricsSource:
    """``plan.analysis.MetricsSource`` over the canary's own pods (gatewayAPI mode).

    ``endpoints(revision)`` names the /metrics URLs of the revision's ready pods (from
    EndpointSlices in the cluster, from the processes in local mode).
    """

    def __init__(self, endpoints: Any, session: Any, clock: Any) -> None:
        self.endpoints = endpoints
        self.session = session
        self.clock = clock
        self.last: dict[str, tuple[float, Counters]] = {}

    async def _text(self, url: str) -> str:
        async with self.session.get(url) as resp:
            resp.raise_for_status()
            text: str = await resp.text()
            return text

    async def measure(self, request: AnalysisRequest) -> Measurements | None:
        urls = list(self.endpoints(request.revision))
        texts = [await self._text(u) for u in urls]
        counters = serve_counters(texts, request.revision)
        now = float(self.clock())
        previous = self.last.get(request.revision)
        self.last = {request.revision: (now, counters)}
        if previous is None:
            return None
        at, before = previous
        return measurements_between(request.revision, before, counters, now - at)
