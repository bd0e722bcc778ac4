"""Spec behaviour a user relies on: defaults, durations, quantities, per-environment variants."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onnxship.api import (
    ExecutionProvider,
    ModelDeploymentSpec,
    QuantizeMode,
    SpecError,
    format_duration,
    parse_duration,
    parse_spec,
)


def minimal(**spec: object) -> ModelDeploymentSpec:
    return parse_spec({"model": {"uri": "s3://models/m.onnx"}, **spec})


def test_defaults_are_what_users_of_olive_and_argo_expect() -> None:
    s = minimal()
    assert s.compression.optimize == "extended"
    # auto: the candidate search (cheapest variant that passes the gate), as Olive's auto-opt
    assert s.compression.quantize.mode == QuantizeMode.auto
    assert s.compression.accuracy_gate.min == 0.99
    assert s.rollout.steps == []
    assert s.rollout.analysis.failure_limit == 2
    assert s.revision_history_limit == 3
    [env] = s.serving.effective_environments()
    assert env.name == "default" and env.execution_provider == ExecutionProvider.CPU


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("2m", 120), ("1h", 3600), ("1h30m", 5400), ("250ms", 0.25), ("1.5m", 90)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "2 minutes", "-1s", "1d", "s"])
def test_bad_durations_say_what_to_write(text: str) -> None:
    with pytest.raises(ValueError, match="use a number and a unit"):
        parse_duration(text)


@given(st.integers(min_value=1, max_value=10 * 3600))
def test_format_duration_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_resource_quantities_accept_yaml_numbers() -> None:
    s = minimal(
        serving={"resources": {"requests": {"cpu": 1, "memory": "1Gi"}, "limits": {"cpu": 0.5}}}
    )
    assert s.serving.resources is not None
    assert s.serving.resources.requests == {"cpu": "1", "memory": "1Gi"}
    assert s.serving.resources.limits == {"cpu": "0.5"}


def test_bad_quantity_names_the_resource() -> None:
    with pytest.raises(SpecError) as info:
        minimal(serving={"resources": {"limits": {"memory": "lots"}}})
    assert info.value.problems[0].startswith("spec.serving.resources.limits.memory:")


def test_environment_override_inherits_the_rest() -> None:
    s = minimal(
        compression={"prune": {"sparsity": 0.3}, "quantize": {"mode": "dynamic"}},
        serving={
            "environments": [
                {"name": "cpu"},
                {
                    "name": "gpu",
                    "executionProvider": "CUDA",
                    "compression": {"quantize": {"mode": "fp16"}},
                },
            ]
        },
    )
    cpu, gpu = s.serving.environments
    assert s.compression_for(cpu).quantize.mode == QuantizeMode.dynamic
    assert s.compression_for(gpu).quantize.mode == QuantizeMode.fp16
    assert s.compression_for(gpu).prune.sparsity == 0.3


def test_every_problem_is_reported_at_once() -> None:
    """A user fixes a file in one pass, not one error per `kubectl apply`."""
    with pytest.raises(SpecError) as info:
        parse_spec(
            {
                "model": {"uri": "ftp://x"},
                "rollout": {"steps": [{"setWeight": 101}], "analysis": {"interval": "soon"}},
            }
        )
    paths = {p.split(":")[0] for p in info.value.problems}
    assert paths == {
        "spec.model.uri",
        "spec.rollout.steps[0].setWeight",
        "spec.rollout.analysis.interval",
    }


def test_missing_model_says_which_field() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({})
    assert info.value.problems == ["spec.model: Field required"]
