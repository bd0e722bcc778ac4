"""`serving.workers`: how many server processes a revision's pod runs, as its arguments say."""

from __future__ import annotations

from typing import Any

import pytest

from onnxship.api import CompressionSummary, SpecError, parse_spec
from onnxship.plan import workloads as w
from tests.plan.test_workloads import OWNER, RUNTIME, STORE, _parse, pod_spec, spec, two_envs

LLM = CompressionSummary(kind="causal-lm", compressed_bytes=1 << 30)
ENCODER = CompressionSummary(kind="onnx", compressed_bytes=90 << 20)


def pod_args(s: Any, artifact: CompressionSummary | None = ENCODER, env: int = 0) -> dict[str, Any]:
    e = s.serving.effective_environments()[env]
    made = w.revision_deployment(OWNER, s, "r1", e, "key", 1, STORE, RUNTIME, artifact=artifact)
    [container] = pod_spec(made)["containers"]
    return _parse("serve", container["args"])


@pytest.mark.parametrize(
    ("resources", "want"),
    [
        (None, 1),  # no limit: not the node's core count
        ({"limits": {"cpu": 4}}, 4),
        ({"limits": {"cpu": "1500m"}}, 2),
        ({"limits": {"cpu": "500m"}}, 1),
        ({"requests": {"cpu": "3"}}, 3),  # no limit: the request
        ({"requests": {"cpu": 2}, "limits": {"cpu": 8, "memory": "4Gi"}}, 8),
        ({"limits": {"memory": "4Gi"}}, 1),
    ],
)
def test_an_encoder_gets_a_worker_per_cpu_of_its_limit(
    resources: dict[str, Any] | None, want: int
) -> None:
    serving = {"resources": resources} if resources else {}
    parsed = pod_args(spec(serving=serving))
    assert parsed["workers"] == want and parsed["threads"] == 0  # 0: the CPUs split


def test_a_causal_lm_gets_one_worker_whatever_its_cpus() -> None:
    s = spec(serving={"resources": {"limits": {"cpu": 8}}})
    assert pod_args(s, LLM)["workers"] == 1
    assert pod_args(s, ENCODER)["workers"] == 8


def test_the_users_setting_wins_and_reaches_the_server() -> None:
    s = spec(serving={"workers": 3, "threads": 2, "resources": {"limits": {"cpu": 8}}})
    parsed = pod_args(s, LLM)
    assert (parsed["workers"], parsed["threads"]) == (3, 2)


def test_an_environments_own_resources_decide() -> None:
    s = two_envs()  # serving: cpu 2; the GPU environment its own resources, a GPU and no CPU
    assert pod_args(s, env=0)["workers"] == 2
    assert pod_args(s, env=1)["workers"] == 1


def test_local_mode_runs_one_worker_unless_asked() -> None:
    s = spec()
    env = s.serving.effective_environments()[0]
    assert _parse("serve", w.serve_args(OWNER, s, env, "key", STORE))["workers"] == 1
    s4 = spec(serving={"workers": 4})
    assert _parse("serve", w.serve_args(OWNER, s4, env, "key", STORE))["workers"] == 4


@pytest.mark.parametrize("bad", [-1, 257, "two"])
def test_a_wrong_workers_value_names_the_field(bad: Any) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec({"model": {"uri": "s3://m/model.onnx"}, "serving": {"workers": bad}})
    assert "serving.workers" in str(err.value)
