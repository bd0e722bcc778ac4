"""provider: prometheus for an LLM canary: a real Prometheus scraping a real router that
streams server-sent events; the PromQL of router/prometheus_source.py gives the same figures
the builtin provider reads (streams timed, TTFT p99 per environment, token agreement)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from onnxship.api import Analysis
from onnxship.plan.analysis import AnalysisRequest, Result, evaluate
from onnxship.router.prometheus_source import PrometheusSource
from tests.local.test_llm_analysis import users
from tests.router.conftest import free_port, router, sse_backends  # noqa: F401

PROMETHEUS = shutil.which("prometheus")


def phase(stable: Any, slow: Any, fast: Any, canary_weight: int, mirror: int = 0) -> dict[str, Any]:
    """r2 is slow to its first token in pool cpu, quick in gpu; its words differ from r1's."""
    doc: dict[str, Any] = {
        "backends": [
            {"revision": "r1", "url": stable.url, "weight": 100 - canary_weight, "environment": e}
            for e in ("cpu", "gpu")
        ]
        + [
            {"revision": "r2", "url": slow.url, "weight": canary_weight, "environment": "cpu"},
            {"revision": "r2", "url": fast.url, "weight": canary_weight, "environment": "gpu"},
        ]
    }
    if mirror:
        doc["mirror"] = {"revision": "r2", "percent": mirror}
    return doc


async def scraped(source: PrometheusSource, counter: str, at_least: int) -> None:
    """Until Prometheus has scraped r2's ``counter`` (summed over its series) at ``at_least``."""
    for _ in range(150):
        total = await source.query(f'sum({counter}{{revision="r2"}})')
        if total is not None and total >= at_least:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"Prometheus never saw {counter} reach {at_least}")


@pytest.mark.skipif(PROMETHEUS is None, reason="Debian package prometheus is not installed")
async def test_llm_figures_from_prometheus(
    sse_backends: Any,  # noqa: F811
    router: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    stable = await sse_backends("stable", gap=0.01)
    words = ["Hello", ",", " there"]  # [Hello, there] against [Hello, streaming world!]: 1 of 3
    slow = await sse_backends("slow", gap=0.01, first_delay=0.4, tokens=words)
    fast = await sse_backends("fast", gap=0.01, tokens=words)
    r = await router()
    await r.put_routes(phase(stable, slow, fast, canary_weight=100))
    target = r.url.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: router\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = free_port()
    assert PROMETHEUS is not None
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        source = PrometheusSource(f"http://127.0.0.1:{port}", r.session)
        for _ in range(150):  # until Prometheus has scraped the router once: the baseline
            try:
                if await source.query("up") == 1.0:
                    break
            except Exception:
                pass
            await asyncio.sleep(0.1)
        # A series' first sample is its baseline for increase(): each gets a first wave,
        # scraped, before the wave that is measured.
        for total in (3, 15):
            for env in ("cpu", "gpu"):  # the canary takes the users' streams in both pools
                await users(r, total - 3 * (total > 3), headers={"onnxship-environment": env})
            await scraped(source, "onnxship_router_time_to_first_token_seconds_count", 2 * total)
        await r.put_routes(phase(stable, slow, fast, canary_weight=0, mirror=100))
        for total in (3, 15):  # then greedy copies of stable's answers
            await users(r, total - 3 * (total > 3), headers={"onnxship-environment": "gpu"})
            await scraped(source, "onnxship_router_mirror_generation_comparisons_total", total)
        request = AnalysisRequest("r2", mirroring=True, interval_seconds=60, serving=True)
        m = None
        for _ in range(100):  # until a scrape after the traffic has landed
            await asyncio.sleep(0.3)
            m = await source.measure(request)
            if m.generations >= 20 and m.token_comparisons >= 10 and m.generation_environments:
                break
        assert m is not None and m.generations >= 20, m  # increase() extrapolates
        assert m.token_comparisons >= 10 and m.token_agreement is not None
        assert m.token_agreement == pytest.approx(1 / 3, abs=0.03)  # two extrapolations
        envs = {e.environment: e for e in m.generation_environments}
        assert set(envs) == {"cpu", "gpu"}
        assert (envs["cpu"].ttft_p99_ms or 0) >= 400 > (envs["gpu"].ttft_p99_ms or 1e9)
        analysis = Analysis.model_validate(
            {
                "minRequests": 5,
                "maxTimeToFirstTokenP99Ms": 300,
                "minOutputAgreement": {"metric": "tokens", "min": 0.9},
            }
        )
        v = evaluate(analysis, m, datetime.now(UTC), True, True)
        assert v.result == Result.failed
        assert "environment cpu: p99 time to first token" in v.message, v.message
        assert "environment gpu" not in v.message and "output agreement (tokens)" in v.message
    finally:
        proc.terminate()
        proc.wait(10)

