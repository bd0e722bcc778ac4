"""The router's Prometheus metrics: per revision, per status code, per role.

``role`` is ``primary`` for requests whose answer went to the user and ``mirror`` for copies
sent to the canary in a mirror step. ``plan`` never sees these names: ``metrics_source``
turns two scrapes into ``plan.analysis.Measurements``.

Generations (``streams.is_generation`` paths) add, per revision and environment, for the
answers users got: time to first token and inter-token latency histograms, and generated
tokens; streamed answers are counted by how they ended. A stream the backend broke off
after its head is counted in ``requests_total`` with code 502 (504 when it stalled), as a
buffered answer would have been: the user got a 200 head, but not the answer.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .compare import TokenComparison
    from .streams import StreamMeter

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric

REQUESTS = "onnxship_router_requests_total"
DURATION = "onnxship_router_request_duration_seconds"
COMPARISONS = "onnxship_router_mirror_comparisons_total"
COSINE = "onnxship_router_mirror_cosine"
TOP1 = "onnxship_router_mirror_top1_agreements_total"
AGREEMENT = "onnxship_router_mirror_agreement"
MAX_ABS_DIFF = "onnxship_router_mirror_max_abs_diff"
TTFT = "onnxship_router_time_to_first_token_seconds"
ITL = "onnxship_router_inter_token_latency_seconds"
OUTPUT_TOKENS = "onnxship_router_output_tokens_total"
STREAMS = "onnxship_router_streams_total"
TOKEN_COMPARISONS = "onnxship_router_mirror_generation_comparisons_total"
TOKEN_AGREEMENT = "onnxship_router_mirror_token_agreement"
FIRST_DIVERGENCE = "onnxship_router_mirror_first_divergence"
IDENTICAL = "onnxship_router_mirror_identical_generations_total"
TOKEN_AGREEMENT_MEAN = "onnxship_router_mirror_token_agreement_mean"
RELOADS = "onnxship_router_route_reloads"

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
)  # fmt: skip
COSINE_BUCKETS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0)
DIFF_BUCKETS = (1e-6, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.5, 1.0, 10.0)
# Fine where analysis thresholds sit (TTFT 0.1-2 s, ITL 10-200 ms): p99 is interpolated.
TTFT_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0,
    5.0, 7.5, 10.0, 20.0, 30.0, 60.0,
)  # fmt: skip
AGREEMENT_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.8, 0.9, 0.95, 0.99, 1.0)
DIVERGENCE_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
ITL_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
    0.3, 0.5, 0.75, 1.0, 2.5, 5.0,
)  # fmt: skip


def fast_observe(child: Any) -> Callable[[float], None]:
    """``child.observe`` for a labelled histogram on the data path: a binary search for the
    bucket instead of prometheus_client's walk over every bound in Python (a cosine near 1
    walked all 11 per mirrored request). Same values: the sum, and the first bucket whose
    bound is at least the amount (NaN in none). ``observe`` itself where the client's
    internals differ from what this expects."""
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    add = getattr(getattr(child, "_sum", None), "inc", None)
    if not (isinstance(bounds, list) and isinstance(buckets, list) and callable(add)):
        return child.observe  # type: ignore[no-any-return]
    if len(bounds) != len(buckets) or not bounds or bounds[-1] != float("inf"):
        return child.observe  # type: ignore[no-any-return]
    counts = [b.inc for b in buckets]

    def observe(amount: float) -> None:
        add(amount)
        if amount == amount:  # NaN is in no bucket (every <= is false)
            counts[bisect_left(bounds, amount)](1)

    return observe


def fast_inc(child: Any) -> Callable[[float], None]:
    """``child.inc`` for a labelled counter on the data path: its value's own ``inc``, without
    the wrapper's per-call checks (the child is a labelled one, the amounts are positive)."""
    add = getattr(getattr(child, "_value", None), "inc", None)
    return add if callable(add) else child.inc  # type: ignore[no-any-return]


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            REQUESTS.removesuffix("_total"),
            "Requests proxied, by revision, environment, status code and role (primary|mirror).",
            ["revision", "environment", "code", "role"],
            registry=r,
        )
        self.duration = Histogram(
            DURATION,
            "Backend round-trip time seen by the router, by revision and role.",
            ["revision", "role"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.comparisons = Counter(
            COMPARISONS.removesuffix("_total"),
            "Mirrored requests whose canary answer was compared with stable's.",
            ["revision", "baseline"],
            registry=r,
        )
        self.cosine = Histogram(
            COSINE,
            "Cosine similarity of canary vs stable outputs on mirrored requests.",
            ["revision", "baseline"],
            buckets=COSINE_BUCKETS,
            registry=r,
        )
        self.top1 = Counter(
            TOP1.removesuffix("_total"),
            "Mirrored comparisons whose top-1 (argmax) agreed on every row.",
            ["revision", "baseline"],
            registry=r,
        )
        self.max_abs_diff = Histogram(
            MAX_ABS_DIFF,
            "Largest absolute output difference, canary vs stable, per mirrored request.",
            ["revision", "baseline"],
            buckets=DIFF_BUCKETS,
            registry=r,
        )
        self.agreement = Gauge(
            AGREEMENT,
            "Mean cosine agreement of the canary with stable since the mirror started.",
            ["revision", "baseline"],
            registry=r,
        )
        self.mirror_dropped = Counter(
            "onnxship_router_mirror_dropped",
            "Mirror copies not sent because too many were in flight.",
            registry=r,
        )
        self.weight = Gauge(
            "onnxship_router_backend_weight",
            "Weight of each revision in each environment, in percent.",
            ["revision", "environment"],
            registry=r,
        )
        self.mirror_percent = Gauge(
            "onnxship_router_mirror_percent",
            "Share of requests mirrored.",
            ["revision"],
            registry=r,
        )
        self.reloads = Counter(
            RELOADS,
            "Route table changes, by source (file|admin) and result (ok|invalid).",
            ["source", "result"],
            registry=r,
        )
        self.ejections = Counter(
            "onnxship_router_backend_ejections",
            "Times a backend was skipped for a while after failing to answer.",
            ["revision", "url"],
            registry=r,
        )
        self.ttft = Histogram(
            TTFT,
            "Time from the router receiving a generation request to the first token of its "
            "streamed answer (first byte when not an event stream), by revision and environment.",
            ["revision", "environment"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            ITL,
            "Time between consecutive token-carrying events of a streamed answer.",
            ["revision", "environment"],
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.output_tokens = Counter(
            OUTPUT_TOKENS.removesuffix("_total"),
            "Tokens generated in answers users got (usage.completion_tokens when reported, "
            "else token-carrying events).",
            ["revision", "environment"],
            registry=r,
        )
        self.streams = Counter(
            STREAMS.removesuffix("_total"),
            "Streamed answers by how they ended: complete, broken (the backend broke off or "
            "stalled) or abandoned (the client left; the backend's request was closed).",
            ["revision", "environment", "outcome"],
            registry=r,
        )
        # Mirrored generations: the canary's greedy answer against stable's, as token sequences
        # (``unit``: token_ids when both servers sent them, else words: text split on spaces).
        self.token_comparisons = Counter(
            TOKEN_COMPARISONS.removesuffix("_total"),
            "Mirrored generations whose canary answer (greedy) was compared with stable's.",
            ["revision", "baseline", "unit"],
            registry=r,
        )
        self.token_agreement = Histogram(
            TOKEN_AGREEMENT,
            "Share of stable's token positions where the canary's greedy answer has the same "
            "token, per mirrored generation.",
            ["revision", "baseline"],
            buckets=AGREEMENT_BUCKETS,
            registry=r,
        )
        self.first_divergence = Histogram(
            FIRST_DIVERGENCE,
            "First token position where the canary's answer differs from stable's (the common "
            "length when none does), per mirrored generation.",
            ["revision", "baseline"],
            buckets=DIVERGENCE_BUCKETS,
            registry=r,
        )
        self.identical = Counter(
            IDENTICAL.removesuffix("_total"),
            "Mirrored generations whose canary answer was token for token stable's.",
            ["revision", "baseline"],
            registry=r,
        )
        self.token_agreement_mean = Gauge(
            TOKEN_AGREEMENT_MEAN,
            "Mean token agreement of the canary with stable since the mirror started.",
            ["revision", "baseline"],
            registry=r,
        )
        self._token_sums: dict[tuple[str, str], tuple[float, int]] = {}
        self._children: dict[tuple[str, str, int, str], tuple[Callable[[float], None], ...]] = {}
        self._agreement_sums: dict[tuple[str, str], tuple[float, int]] = {}
        self._compared: dict[tuple[str, str], tuple[Any, ...]] = {}

    def observe(
        self, revision: str, environment: str, code: int, role: str, seconds: float
    ) -> None:
        # labels() hashes and locks on every call; the children never change, so keep them.
        key = (revision, environment, code, role)
        pair = self._children.get(key)
        if pair is None:
            pair = (
                fast_inc(self.requests.labels(revision, environment, str(code), role)),
                fast_observe(self.duration.labels(revision, role)),
            )
            self._children[key] = pair
        pair[0](1)
        pair[1](seconds)

    def streamed(self, revision: str, environment: str, meter: StreamMeter, outcome: str) -> None:
        """One streamed answer, at its end."""
        self.streams.labels(revision, environment, outcome).inc()
        ttft = meter.ttft
        if ttft is not None:
            self.ttft.labels(revision, environment).observe(ttft)
        if meter.gaps:
            itl = self.itl.labels(revision, environment)
            for gap in meter.gaps:
                itl.observe(gap)
        if meter.tokens:
            self.output_tokens.labels(revision, environment).inc(meter.tokens)

    def generated(self, revision: str, environment: str, tokens: int) -> None:
        """Tokens of a generation answered whole (not streamed)."""
        if tokens:
            self.output_tokens.labels(revision, environment).inc(tokens)

    def compared(
        self, revision: str, baseline: str, cosine: float, top1: float, diff: float
    ) -> None:
        key = (revision, baseline)
        c = self._compared.get(key)
        if c is None:  # once per pair: labels() hashes and locks (see observe)
            c = self._compared[key] = (
                fast_inc(self.comparisons.labels(revision, baseline)),
                fast_observe(self.cosine.labels(revision, baseline)),
                fast_inc(self.top1.labels(revision, baseline)),
                fast_observe(self.max_abs_diff.labels(revision, baseline)),
                self.agreement.labels(revision, baseline),
            )
        c[0](1)
        c[1](cosine)
        if top1 >= 1.0:
            c[2](1)
        c[3](diff)
        total, n = self._agreement_sums.get(key, (0.0, 0))
        total, n = total + cosine, n + 1
        self._agreement_sums[key] = (total, n)
        c[4].set(total / n)

    def compared_tokens(
        self, revision: str, baseline: str, result: TokenComparison, unit: str
    ) -> None:
        self.token_comparisons.labels(revision, baseline, unit).inc()
        self.token_agreement.labels(revision, baseline).observe(result.agreement)
        self.first_divergence.labels(revision, baseline).observe(result.first_divergence)
        if result.identical:
            self.identical.labels(revision, baseline).inc()
        total, n = self._token_sums.get((revision, baseline), (0.0, 0))
        total, n = total + result.agreement, n + 1
        self._token_sums[(revision, baseline)] = (total, n)
        self.token_agreement_mean.labels(revision, baseline).set(total / n)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def families(self) -> list[Family]:
        """The metrics as plain data (JSON), for a pod's other workers to merge."""
        return [
            {
                "name": f.name,
                "type": f.type,
                "help": f.documentation,
                "samples": [[s.name, s.labels, s.value] for s in f.samples],
            }
            for f in self.registry.collect()
        ]


# One worker's metrics as data: {"name", "type", "help", "samples": [[name, labels, value]]}.
Family = dict[str, Any]
# Gauges that are the mean of a histogram's observations: recomputed from the summed histogram,
# which is what one process would have said.
_MEANS = {AGREEMENT: COSINE, TOKEN_AGREEMENT_MEAN: TOKEN_AGREEMENT}
# Every worker counts each route change it adopts: the pod adopted it once.
_SAME_IN_EVERY_WORKER = {RELOADS}
_Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]  # (sample, labels) -> value


def merged_exposition(parts: list[list[Family]]) -> bytes:
    """The workers' metrics as one process would expose them: counters and histograms summed,
    gauges of the route table (the same in every worker) their largest value, means recomputed.
    """
    merged: dict[str, tuple[str, str, _Values]] = {}
    for part in parts:
        for family in part:
            name, kind = family["name"], family["type"]
            entry = merged.setdefault(name, (kind, family["help"], {}))
            values = entry[2]
            largest = kind == "gauge" or name in _SAME_IN_EVERY_WORKER
            for sample, labels, value in family["samples"]:
                key = (sample, tuple(sorted(labels.items())))
                old = values.get(key)
                if old is None:
                    values[key] = value
                elif sample.endswith("_created"):
                    values[key] = min(old, value)
                elif largest:
                    values[key] = max(old, value)
                else:
                    values[key] = old + value
    for gauge, histogram in _MEANS.items():
        if gauge in merged and histogram in merged:
            observed = merged[histogram][2]
            means = merged[gauge][2]
            for key in means:
                total = observed.get((histogram + "_sum", key[1]))
                count = observed.get((histogram + "_count", key[1]))
                if total is not None and count:
                    means[key] = total / count
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(merged))
    return generate_latest(registry)


class _Merged:
    def __init__(self, merged: dict[str, tuple[str, str, _Values]]) -> None:
        self.merged = merged

    def collect(self) -> list[Metric]:
        out = []
        for name, (kind, doc, values) in self.merged.items():
            metric = Metric(name, doc, kind)
            for (sample, labels), value in values.items():
                metric.add_sample(sample, dict(labels), value)
            out.append(metric)
        return out
