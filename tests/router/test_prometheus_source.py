"""The prometheus analysis provider against a real Prometheus scraping a real router."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from onnxship.plan.analysis import AnalysisRequest
from onnxship.router.prometheus_source import PrometheusSource, promql_queries

from .conftest import free_port, table

PROMETHEUS = shutil.which("prometheus") or (
    "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
)


def test_queries_are_templated_with_revision_and_namespace() -> None:
    q = promql_queries('app-"x', "team-a", "30s")
    assert q["errors"] == (
        'sum(increase(onnxship_router_requests_total{revision="app-\\"x",namespace="team-a",'
        'code=~"5.."}[30s]))'
    )
    assert q["p99_seconds"].startswith("histogram_quantile(0.99, sum by (le) (rate(")


@pytest.mark.skipif(PROMETHEUS is None, reason="Debian package prometheus is not installed")
async def test_measurements_from_prometheus(backends, router, tmp_path: Path) -> None:
    good, bad = await backends("good"), await backends("bad", fail=True)
    r = await router()
    await r.put_routes(table(("r1", good, 50), ("r2", bad, 50)))
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
        request = AnalysisRequest("r2", mirroring=False, interval_seconds=60)
        for _ in range(150):  # until Prometheus has scraped the router at least once
            try:
                if await source.query("up") == 1.0:
                    break
            except Exception:
                pass
            await asyncio.sleep(0.1)
        # A counter's first sample is its baseline for increase(): traffic in two waves.
        for wave in (10, 20):
            for _ in range(wave):
                await r.infer()
            seen = f'sum(onnxship_router_requests_total{{revision="r2"}}) >= {wave // 2}'
            for _ in range(100):
                if await source.query(seen) is not None:
                    break
                await asyncio.sleep(0.2)
        m = None
        for _ in range(100):  # until a scrape after the traffic has landed
            await asyncio.sleep(0.2)
            m = await source.measure(request)
            if m.requests >= 8:
                break
        assert m is not None and m.requests >= 8
        assert m.error_rate is not None and m.error_rate >= 0.9  # increase() extrapolates
        assert m.latency_p99_ms is not None and m.latency_p99_ms > 0
        none = await source.measure(AnalysisRequest("nope", False, 60))
        assert none.requests == 0
    finally:
        proc.terminate()
        proc.wait(10)
