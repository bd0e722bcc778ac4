"""The operator's analysis input: router pods' (or the canary's own pods') /metrics, summed,
as interval deltas."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import generate_latest

from onnxship.api import Analysis, OutputAgreement, parse_spec
from onnxship.controller.router_metrics import PodMetrics
from onnxship.plan.analysis import AnalysisRequest, Result, evaluate
from onnxship.plan.workloads import L_COMPONENT, L_DEPLOYMENT, L_REVISION, Owner
from onnxship.router.compare import TokenComparison
from onnxship.router.metrics import RouterMetrics
from onnxship.router.prometheus_source import environment_queries, promql_queries
from onnxship.router.streams import StreamMeter
from onnxship.serve.metrics import LlmMetrics, ServeMetrics

OWNER = Owner("enc", "ml", "u")
SPEC = parse_spec({"model": {"uri": "s3://m/m.onnx"}})
REQ = AnalysisRequest("enc-v2", mirroring=False, interval_seconds=30)


class Pods:
    """Two ready pods and one that is starting, as the API lists them."""

    def __init__(self, selector: dict[str, str] | None = None) -> None:
        self.selector = selector or {L_DEPLOYMENT: "enc", L_COMPONENT: "router"}

    def list(self, kind: str, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        assert kind == "Pod" and selector == self.selector

        def pod(ip: str, ready: str) -> dict[str, Any]:
            return {"status": {"podIP": ip, "conditions": [{"type": "Ready", "status": ready}]}}

        return [pod("10.0.0.1", "True"), pod("10.0.0.2", "True"), pod("10.0.0.3", "False")]


def test_sums_router_replicas_and_takes_deltas() -> None:
    routers = {"10.0.0.1": RouterMetrics(), "10.0.0.2": RouterMetrics()}
    clock = iter([100.0, 130.0])

    def fetch(url: str) -> str:
        ip = url.split("//")[1].split(":")[0]
        assert ip in routers, "only ready pods are scraped"
        return generate_latest(routers[ip].registry).decode()

    source = PodMetrics(Pods(), fetch=fetch, clock=lambda: next(clock))  # type: ignore[arg-type]
    now = datetime(2026, 11, 23, tzinfo=UTC)
    for _ in range(10):
        routers["10.0.0.1"].observe("enc-v2", "", 200, "primary", 0.010)
    assert source.measure(OWNER, SPEC, REQ, now) is None, "the first scrape is only a baseline"

    for _ in range(30):
        routers["10.0.0.1"].observe("enc-v2", "", 200, "primary", 0.010)
    for _ in range(10):
        routers["10.0.0.2"].observe("enc-v2", "", 503, "primary", 0.200)
    routers["10.0.0.2"].observe("enc-v1", "", 500, "primary", 0.010)  # stable's errors don't count
    m = source.measure(OWNER, SPEC, REQ, now)
    assert m is not None
    assert (m.requests, m.errors) == (40, 10)
    assert m.error_rate == 0.25
    assert m.interval_seconds == 30
    assert m.latency_p99_ms is not None and m.latency_p99_ms > 100


def test_an_unreachable_router_skips_the_interval() -> None:
    def fetch(url: str) -> str:
        raise OSError("connection refused")

    source = PodMetrics(Pods(), fetch=fetch)  # type: ignore[arg-type]
    assert source.measure(OWNER, SPEC, REQ, datetime.now(UTC)) is None


def test_gateway_mode_reads_the_canarys_own_pods() -> None:
    """No onnxship router sees gatewayAPI traffic: the canary's servers count it."""
    spec = parse_spec(
        {
            "model": {"uri": "s3://m/m.onnx"},
            "rollout": {
                "traffic": {"router": "gatewayAPI", "gateway": {"parentRefs": [{"name": "gw"}]}}
            },
        }
    )
    selector = {L_DEPLOYMENT: "enc", L_REVISION: "enc-v2", L_COMPONENT: "model"}
    servers = {"10.0.0.1": ServeMetrics("enc", "v2"), "10.0.0.2": ServeMetrics("enc", "v2")}
    clock = iter([0.0, 30.0])

    def fetch(url: str) -> str:
        assert url.endswith(":8000/metrics")
        return servers[url.split("//")[1].split(":")[0]].exposition().decode()

    source = PodMetrics(Pods(selector), fetch=fetch, clock=lambda: next(clock))  # type: ignore[arg-type]
    now = datetime(2026, 11, 23, tzinfo=UTC)
    assert source.measure(OWNER, spec, REQ, now) is None
    for _ in range(18):
        servers["10.0.0.1"].request(200, 0.02)
    for _ in range(2):
        servers["10.0.0.2"].request(500, 0.02)
    m = source.measure(OWNER, spec, REQ, now)
    assert m is not None and (m.requests, m.errors) == (20, 2)


def test_each_environment_is_measured_on_its_own() -> None:
    routers = {"10.0.0.1": RouterMetrics(), "10.0.0.2": RouterMetrics()}
    clock = iter([0.0, 30.0])

    def fetch(url: str) -> str:
        return generate_latest(routers[url.split("//")[1].split(":")[0]].registry).decode()

    source = PodMetrics(Pods(), fetch=fetch, clock=lambda: next(clock))  # type: ignore[arg-type]
    now = datetime(2026, 11, 23, tzinfo=UTC)
    source.measure(OWNER, SPEC, REQ, now)
    for _ in range(90):
        routers["10.0.0.1"].observe("enc-v2", "cpu", 200, "primary", 0.01)
    for _ in range(6):
        routers["10.0.0.2"].observe("enc-v2", "gpu", 200, "primary", 0.01)
    for _ in range(4):
        routers["10.0.0.2"].observe("enc-v2", "gpu", 502, "primary", 0.01)
    m = source.measure(OWNER, SPEC, REQ, now)
    assert m is not None and m.environments == (("cpu", 90, 0), ("gpu", 10, 4))


def test_routed_is_what_the_ready_routers_have_loaded() -> None:
    """A revision leaves only once no router sends it requests (found by e2e: the old
    stable was deleted while the router had not yet loaded the new table)."""
    old, new = RouterMetrics(), RouterMetrics()
    old.weight.labels("enc-v1", "").set(40)
    old.weight.labels("enc-v2", "").set(60)
    new.weight.labels("enc-v1", "").set(0)
    new.weight.labels("enc-v2", "").set(100)
    routers = {"10.0.0.1": old, "10.0.0.2": new}

    def fetch(url: str) -> str:
        return generate_latest(routers[url.split("//")[1].split(":")[0]].registry).decode()

    source = PodMetrics(Pods(), fetch=fetch)  # type: ignore[arg-type]
    assert source.routed(OWNER) == {"enc-v1", "enc-v2"}
    routers["10.0.0.1"] = new
    assert source.routed(OWNER) == {"enc-v2"}

    def down(url: str) -> str:
        raise OSError("connection refused")

    assert PodMetrics(Pods(), fetch=down).routed(OWNER) is None  # type: ignore[arg-type]


def stream(ttft: float, gaps: list[float], tokens: int) -> StreamMeter:
    meter = StreamMeter(started=0.0, sse=True)
    meter.first, meter.gaps, meter.usage = ttft, gaps, tokens
    return meter


def test_llm_figures_summed_over_router_replicas() -> None:
    """Streams timed per pool, p99s, and mirrored generations compared token by token reach
    the verdict: a slow pool and disagreeing tokens fail the canary, naming the figures."""
    routers = {"10.0.0.1": RouterMetrics(), "10.0.0.2": RouterMetrics()}
    clock = iter([100.0, 130.0])

    def fetch(url: str) -> str:
        return generate_latest(routers[url.split("//")[1].split(":")[0]].registry).decode()

    source = PodMetrics(Pods(), fetch=fetch, clock=lambda: next(clock))  # type: ignore[arg-type]
    now = datetime(2026, 11, 23, tzinfo=UTC)
    request = AnalysisRequest("llm-v2", mirroring=True, interval_seconds=30, serving=True)
    assert source.measure(OWNER, SPEC, request, now) is None
    for i in range(40):  # cpu: 40 quick streams on one replica, gpu: 20 slow on the other
        routers["10.0.0.1"].observe("llm-v2", "cpu", 200, "primary", 1.0)
        routers["10.0.0.1"].streamed("llm-v2", "cpu", stream(0.12, [0.02] * 9, 10), "complete")
        if i < 20:
            routers["10.0.0.2"].observe("llm-v2", "gpu", 200, "primary", 3.0)
            routers["10.0.0.2"].streamed("llm-v2", "gpu", stream(2.5, [0.03] * 9, 10), "complete")
    for i in range(25):  # mirrored greedy copies: 5 agree, 20 diverge at position 3 of 10
        same = i < 5
        result = TokenComparison(1.0 if same else 0.3, 10 if same else 3, same, 10, 10)
        routers["10.0.0.2"].compared_tokens("llm-v2", "llm-v1", result, "words")
    m = source.measure(OWNER, SPEC, request, now)
    assert m is not None
    assert (m.requests, m.generations, m.token_comparisons) == (60, 60, 25)
    assert m.token_agreement == pytest.approx((5 * 1.0 + 20 * 0.3) / 25)
    cpu, gpu = m.generation_environments
    assert (cpu.environment, cpu.generations, gpu.environment, gpu.generations) == (
        "cpu", 40, "gpu", 20,
    )  # fmt: skip
    assert cpu.ttft_p99_ms is not None and 100 < cpu.ttft_p99_ms <= 150
    assert gpu.ttft_p99_ms is not None and 2000 < gpu.ttft_p99_ms <= 3000
    assert m.itl_p99_ms is not None and 20 <= m.itl_p99_ms <= 40

    analysis = Analysis(
        max_time_to_first_token_p99_ms=1000,
        min_output_agreement=OutputAgreement(metric="tokens", min=0.9),
    )
    v = evaluate(analysis, m, now, request.mirroring, request.serving)
    assert v.result == Result.failed
    assert "environment gpu: p99 time to first token" in v.message
    assert "output agreement (tokens) 0.4400 below 0.9" in v.message


def test_prometheus_provider_asks_for_the_llm_figures() -> None:
    """provider: prometheus reads the same series as the builtin provider."""
    q = promql_queries("llm-v2", "team-a", "60s")
    sel = 'revision="llm-v2",namespace="team-a"'
    assert q["generations"] == (
        f"sum(increase(onnxship_router_time_to_first_token_seconds_count{{{sel}}}[60s]))"
    )
    assert q["ttft_p99_seconds"] == (
        "histogram_quantile(0.99, sum by (le) "
        f"(rate(onnxship_router_time_to_first_token_seconds_bucket{{{sel}}}[60s])))"
    )
    assert "onnxship_router_inter_token_latency_seconds_bucket" in q["itl_p99_seconds"]
    assert q["token_agreement_sum"] == (
        f"sum(increase(onnxship_router_mirror_token_agreement_sum{{{sel}}}[60s]))"
    )
    per_env = environment_queries("llm-v2", "team-a", "60s")
    assert per_env["ttft_p99_seconds"].startswith(
        "histogram_quantile(0.99, sum by (environment, le) "
    )


def test_gateway_mode_times_an_llm_canary_on_its_own_servers() -> None:
    """gatewayAPI: no router sees the streams; the canary's servers time their generations."""
    spec = parse_spec(
        {
            "model": {"uri": "s3://m/llm/"},
            "rollout": {
                "traffic": {"router": "gatewayAPI", "gateway": {"parentRefs": [{"name": "gw"}]}}
            },
        }
    )
    selector = {L_DEPLOYMENT: "enc", L_REVISION: "enc-v2", L_COMPONENT: "model"}
    servers = {ip: ServeMetrics("llm", "v2") for ip in ("10.0.0.1", "10.0.0.2")}
    llm = {ip: LlmMetrics(m) for ip, m in servers.items()}
    clock = iter([0.0, 30.0])

    def fetch(url: str) -> str:
        return servers[url.split("//")[1].split(":")[0]].exposition().decode()

    source = PodMetrics(Pods(selector), fetch=fetch, clock=lambda: next(clock))  # type: ignore[arg-type]
    request = AnalysisRequest("enc-v2", mirroring=False, interval_seconds=30, serving=True)
    now = datetime(2026, 11, 23, tzinfo=UTC)
    assert source.measure(OWNER, spec, request, now) is None
    for i in range(20):
        ip = "10.0.0.1" if i % 2 else "10.0.0.2"
        servers[ip].request(200, 1.5)
        llm[ip].first_token(1.2 if i < 18 else 0.04)  # a prompt stuck behind others
        for _ in range(8):
            llm[ip].inter_token(0.02)
    m = source.measure(OWNER, spec, request, now)
    assert m is not None and (m.requests, m.generations) == (20, 20)
    assert m.ttft_p99_ms is not None and 1000 < m.ttft_p99_ms <= 2500
    assert m.itl_p99_ms is not None and 10 < m.itl_p99_ms <= 30
    v = evaluate(Analysis(max_time_to_first_token_p99_ms=500, min_requests=10), m, now, False, True)
    assert v.result == Result.failed and "p99 time to first token" in v.message
