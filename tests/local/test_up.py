"""`onnxship up` end to end, as a user runs it: real processes on free ports, real ONNX Runtime.

One story: v1 goes live; traffic flows through the router; v2 is applied from another
terminal and its canary walks to 100%; the broken v3 is applied and rolled back by the
analysis while users keep getting answers; Ctrl-C leaves no process behind; a second `up`
resumes from the state folder with cache hits and serves again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from onnxship.local.loadgen import LoadGenerator, infer_url
from onnxship.local.state import pid_alive

from .conftest import Up, version_of, write_spec


def test_up_canary_rollback_ctrl_c_and_cache_hits(
    tmp_path: Path, demo_models: dict[str, Path], up_factory: Callable[[], Up]
) -> None:
    specs = {v: write_spec(tmp_path, demo_models, v) for v in ("v1", "v2", "v3")}
    up = up_factory().start(str(specs["v1"]))

    status = up.wait_for("v1 stable", lambda s: s.phase == "Ready" and s.stable_revision != "")
    assert version_of(status, status.stable_revision) == "v1"
    assert status.endpoint == up.endpoint
    v1 = status.stable_revision

    with LoadGenerator(infer_url(up.endpoint, "encoder"), rate=40, concurrency=4) as load:
        applied = up.cli("apply", str(specs["v2"]))
        assert applied.exit_code == 0, applied.output
        status = up.wait_for(
            "v2 promoted",
            lambda s: s.phase == "Ready" and version_of(s, s.stable_revision) == "v2",
            resume_when_inconclusive=True,
        )
        v2 = status.stable_revision
        assert v2 != v1

        before_v3 = load.stats.copy()
        applied = up.cli("apply", str(specs["v3"]))
        assert applied.exit_code == 0, applied.output
        status = up.wait_for(
            "v3 rolled back", lambda s: s.aborted and version_of(s, s.canary_revision) == "v3"
        )
        v3 = status.canary_revision
        during_v3 = load.stats.copy()

    # What the user sees: v3 rolled back by the analysis, v2 still stable and answering.
    assert status.phase == "Degraded"
    assert status.stable_revision == v2
    assert status.canary_weight == 0
    assert status.analysis is not None and status.analysis.verdict == "fail"
    degraded = next(c for c in status.conditions if c.type == "Degraded")
    assert degraded.status == "True" and degraded.reason == "AnalysisFailed"
    assert load.stats.ok > 100
    # The mirror step copied requests to v3; users were answered by v2 throughout.
    sent = during_v3.sent - before_v3.sent
    failed = (during_v3.sent - during_v3.ok) - (before_v3.sent - before_v3.ok)
    assert sent > 0 and failed == 0, f"{failed} of {sent} user requests failed during v3"

    shown = up.cli("status")
    assert shown.exit_code == 0, shown.output
    for text in ("Degraded", v2, v3, "aborted", "stable"):
        assert text in shown.stdout, shown.stdout
    as_json = json.loads(up.cli("status", "--output", "json").stdout)
    assert as_json["running"] is True
    assert as_json["stats"][v3]["mirrored"] > 0

    # Ctrl-C: every child stops, the store and the status stay.
    pids = (up.state.read_runtime() or {})["pids"]
    assert len(pids) >= 2  # the router, v2's server (and v3's while it drains)
    assert up.interrupt() == 0
    assert [p for p in pids if pid_alive(p)] == []
    assert up.state.read_runtime()["running"] is False  # type: ignore[index]
    assert "stopped" in up.output()
    assert up.cli("status").exit_code == 0

    # A second `up` (no FILE: it resumes the applied deployment) finds its artifacts.
    again = up_factory().start()
    again.wait_for("v2 serving again", lambda s: s.phase in ("Degraded", "Ready"))
    again_runtime = _wait_runtime(again, lambda r: v3 in r.get("cacheHits", []))
    assert v3 in again_runtime["cacheHits"]
    assert "cache hit" in again.output()
    assert "compressed and stored" not in again.output()
    _wait_runtime(again, lambda r: r["processes"].get(v2, "").startswith("ready"))
    with LoadGenerator(infer_url(again.endpoint, "encoder"), rate=20) as load:
        time.sleep(1.0)
    assert load.stats.ok > 0 and load.stats.errors == 0
    assert again.interrupt() == 0


def _wait_runtime(up: Up, check: Callable[[dict], bool], timeout: float = 30) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runtime = up.state.read_runtime() or {}
        if runtime and check(runtime):
            return runtime
        time.sleep(0.1)
    raise AssertionError(f"runtime never matched: {up.state.read_runtime()}\n{up.output()}")
