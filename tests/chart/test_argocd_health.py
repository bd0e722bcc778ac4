"""The Argo CD health check (examples/argocd/health.lua) in Lua 5.1, as Argo CD runs it.

Statuses are built with the API's own status model, so a renamed status field breaks here.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from onnxship.api import ConditionType, Phase, Reason
from onnxship.api.status import AnalysisStatus, Condition, ModelDeploymentStatus

from .conftest import ROOT

lupa = pytest.importorskip("lupa.lua51", reason="lupa (test extra) ships Lua 5.1")

ARGOCD = ROOT / "examples" / "argocd"
SCRIPT = (ARGOCD / "health.lua").read_text()


def lua_value(lua: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({k: lua_value(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([lua_value(lua, v) for v in value])
    return value


def health(obj: dict[str, Any]) -> dict[str, str]:
    """Run the script the way Argo CD does: `obj` is a global, the script returns a table."""
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    # Argo CD runs health scripts without os and io.
    lua.execute("os = nil; io = nil")
    lua.globals().obj = lua_value(lua, obj)
    result = lua.execute(SCRIPT)
    return dict(result.items())


def mdep(status: ModelDeploymentStatus | None, generation: int = 3) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "onnxship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "encoder", "namespace": "ml", "generation": generation},
        "spec": {"model": {"uri": "s3://models/encoder/v4/model.onnx"}},
    }
    if status is not None:
        obj["status"] = status.to_wire()
    return obj


def cond(type_: ConditionType, status: str, reason: Reason, message: str = "") -> Condition:
    return Condition(type=type_.value, status=status, reason=reason.value, message=message)


def status(phase: Phase, **kw: Any) -> ModelDeploymentStatus:
    return ModelDeploymentStatus(observed_generation=3, phase=phase, **kw)


CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    "no status yet": (mdep(None), "Progressing", "Waiting for the onnxship operator"),
    "old generation": (
        mdep(status(Phase.ready, stable_revision="encoder-a1"), generation=4),
        "Progressing",
        "observe generation 4",
    ),
    Phase.pending.value: (mdep(status(Phase.pending)), "Progressing", ""),
    Phase.compressing.value: (
        mdep(
            status(
                Phase.compressing,
                message="compressing encoder-b2",
                conditions=[cond(ConditionType.compressed, "False", Reason.compression_started)],
            )
        ),
        "Progressing",
        "compressing encoder-b2",
    ),
    Phase.progressing.value: (
        mdep(
            status(
                Phase.progressing,
                stable_revision="encoder-a1",
                canary_revision="encoder-b2",
                canary_weight=10,
                current_step=2,
                message="canary encoder-b2 at 10% (step 2/5)",
            )
        ),
        "Progressing",
        "canary encoder-b2 at 10%",
    ),
    Phase.paused.value: (
        mdep(
            status(
                Phase.paused,
                stable_revision="encoder-a1",
                canary_revision="encoder-b2",
                canary_weight=50,
                paused=True,
                message="canary encoder-b2 at 50% (step 5/5, paused)",
            )
        ),
        "Suspended",
        "paused",
    ),
    "paused without a message": (
        mdep(
            status(
                Phase.paused,
                stable_revision="encoder-a1",
                canary_revision="encoder-b2",
                canary_weight=50,
                paused=True,
            )
        ),
        "Suspended",
        "stable encoder-a1, canary encoder-b2 at 50% (paused)",
    ),
    Phase.ready.value: (
        mdep(
            status(
                Phase.ready,
                stable_revision="encoder-a1",
                message="encoder-a1 is stable",
                conditions=[cond(ConditionType.available, "True", Reason.stable_serving)],
            )
        ),
        "Healthy",
        "encoder-a1 is stable",
    ),
    Phase.degraded.value: (
        mdep(
            status(
                Phase.degraded,
                stable_revision="encoder-a1",
                message="accuracy 0.91 < 0.99",
                conditions=[cond(ConditionType.degraded, "True", Reason.accuracy_gate_failed)],
            )
        ),
        "Degraded",
        "AccuracyGateFailed: accuracy 0.91 < 0.99",
    ),
    "rolled back by the analysis": (
        mdep(
            status(
                Phase.degraded,
                stable_revision="encoder-a1",
                canary_revision="encoder-c3",
                aborted=True,
                message="error rate 0.2 > 0.01; encoder-a1 keeps serving",
                analysis=AnalysisStatus(verdict="fail", failures=2),
                conditions=[cond(ConditionType.degraded, "True", Reason.analysis_failed)],
            )
        ),
        "Degraded",
        "AnalysisFailed: error rate 0.2 > 0.01",
    ),
    "degraded condition while serving": (
        mdep(
            status(
                Phase.ready,
                stable_revision="encoder-a1",
                conditions=[
                    cond(ConditionType.degraded, "True", Reason.store_unavailable, "store down")
                ],
            )
        ),
        "Degraded",
        "StoreUnavailable",
    ),
    "degraded condition false": (
        mdep(
            status(
                Phase.ready,
                stable_revision="encoder-a1",
                conditions=[cond(ConditionType.degraded, "False", Reason.healthy)],
            )
        ),
        "Healthy",
        "stable encoder-a1",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_health_of_each_status(case: str) -> None:
    obj, expected_status, expected_message = CASES[case]
    hs = health(obj)
    assert hs["status"] == expected_status, hs
    assert expected_message in hs["message"], hs


def test_every_phase_has_a_case() -> None:
    """A phase added to the API needs a decision here (and in health.lua)."""
    assert {p.value for p in Phase} <= set(CASES)


def test_an_unknown_phase_is_reported_not_hidden() -> None:
    obj = mdep(status(Phase.ready))
    obj["status"]["phase"] = "Exploding"
    assert health(obj) == {"status": "Unknown", "message": "Unknown phase Exploding"}


def test_argocd_config_carries_the_same_script() -> None:
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    key = "resource.customizations.health.onnxship.io_ModelDeployment"
    assert cm["data"][key] == SCRIPT
