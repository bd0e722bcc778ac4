"""The dashboard and the alerts query only metrics the code exports; the alerts fire as meant."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from onnxship.controller.metrics import OperatorMetrics
from onnxship.router.metrics import RouterMetrics
from onnxship.serve.metrics import ServeMetrics

from .conftest import CHART, Helm, one

pytestmark = pytest.mark.timeout(1800)  # may build helm (minutes, cold)

DASHBOARD = CHART / "files" / "grafana-dashboard.json"
RULES_TEMPLATE = CHART / "templates" / "prometheusrule.yaml"
METRIC = re.compile(r"\b(onnxship_[a-z0-9_]+)\b")
# Labels added by Prometheus or by the chart's PodMonitor (podTargetLabels), not by the code.
SCRAPE_LABELS = {"namespace", "pod", "job", "instance", "le"} | {
    "onnxship_io_deployment",
    "onnxship_io_revision",
    "onnxship_io_environment",
    "onnxship_io_component",
}


def exported() -> dict[str, set[str]]:
    """Every series name the three exporters can emit, with its label names."""
    registries: list[CollectorRegistry] = [
        ServeMetrics("m", "v").registry,
        RouterMetrics().registry,
        OperatorMetrics().registry,
    ]
    names: dict[str, set[str]] = {}
    suffixes = {
        "counter": ["_total", "_created"],
        "histogram": ["_bucket", "_sum", "_count", "_created"],
        "gauge": [""],
    }
    for registry in registries:
        # prometheus_client keeps no public list of a registry's metrics and their labels.
        for collector in set(registry._collector_to_names):
            for suffix in suffixes[collector._type]:
                names[collector._name + suffix] = set(collector._labelnames)
    return names


def metrics_in(expr: str) -> set[str]:
    return set(METRIC.findall(expr)) - SCRAPE_LABELS


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if v.get("definition")]
    return exprs


def test_dashboard_queries_only_exported_metrics() -> None:
    known = exported()
    used = {m for e in dashboard_exprs() for m in metrics_in(e)}
    assert used, "the dashboard queries nothing"
    assert used <= set(known), f"not exported by the code: {sorted(used - set(known))}"


def test_dashboard_groups_by_labels_that_exist() -> None:
    known = exported()
    for expr in dashboard_exprs():
        metrics = metrics_in(expr)
        labels = set().union(*(known[m] for m in metrics)) | SCRAPE_LABELS
        for group in re.findall(r"by \(([^)]*)\)", expr):
            for label in (g.strip() for g in group.split(",")):
                assert label in labels, f"{label!r} in {expr!r}"


def test_dashboard_covers_what_operators_of_a_canary_look_at() -> None:
    used = {m for e in dashboard_exprs() for m in metrics_in(e)}
    for needed in (
        "onnxship_router_requests_total",  # requests and errors by revision
        "onnxship_router_request_duration_seconds_bucket",  # latency by revision
        "onnxship_router_backend_weight",  # canary weight
        "onnxship_inference_batch_size_bucket",  # batch sizes
        "onnxship_inference_queue_depth",  # queue depth
    ):
        assert needed in used


def test_alerts_query_only_exported_metrics() -> None:
    used = metrics_in(RULES_TEMPLATE.read_text())
    assert "onnxship_router_requests_total" in used
    assert used <= set(exported()), sorted(used - set(exported()))


# ------------------------------------------------------------------ promtool


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not on PATH (Debian: apt-get install prometheus)")
    return found


@pytest.fixture
def rules_file(helm: Helm, tmp_path: Path) -> Path:
    docs = helm.render(
        {"monitoring": {"prometheusRule": {"enabled": True, "stuckRolloutMinutes": 30}}}
    )
    rule = one(docs, "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60)


def test_rendered_rules_pass_promtool_check(rules_file: Path) -> None:
    proc = run_promtool("check", "rules", str(rules_file))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 7 rules found" in proc.stdout


def series(labels: dict[str, str], name: str, values: str) -> dict[str, Any]:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


MD = {"namespace": "ml", "onnxship_io_deployment": "encoder", "job": "ml/onnxship-workloads"}


def fired(rules: Path, alert: str, labels: dict[str, str], summary: str) -> dict[str, Any]:
    """An expected alert: its labels and summary as given, its fixed description as written."""
    groups = yaml.safe_load(rules.read_text())["groups"]
    rule = next(r for g in groups for r in g["rules"] if r.get("alert") == alert)
    return {
        "exp_labels": {**rule["labels"], **labels},
        "exp_annotations": {"summary": summary, "description": rule["annotations"]["description"]},
    }


def alert_tests(rules: Path) -> dict[str, Any]:
    ok = {**MD, "revision": "encoder-a1", "environment": "cpu", "role": "primary"}
    return {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {  # 10% of answers are 5xx for 15 minutes: the error-rate alert fires
                "interval": "1m",
                "input_series": [
                    series({**ok, "code": "200"}, "onnxship_router_requests_total", "0+90x20"),
                    series({**ok, "code": "503"}, "onnxship_router_requests_total", "0+10x20"),
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "15m",
                        "alertname": "OnnxshipHighErrorRate",
                        "exp_alerts": [
                            fired(
                                rules,
                                "OnnxshipHighErrorRate",
                                {"namespace": "ml", "onnxship_io_deployment": "encoder"},
                                "ModelDeployment ml/encoder answers 10% of requests with 5xx",
                            )
                        ],
                    },
                ],
            },
            {  # 1% of errors stays under the 5% threshold
                "interval": "1m",
                "input_series": [
                    series({**ok, "code": "200"}, "onnxship_router_requests_total", "0+99x20"),
                    series({**ok, "code": "500"}, "onnxship_router_requests_total", "0+1x20"),
                ],
                "alert_rule_test": [
                    {"eval_time": "15m", "alertname": "OnnxshipHighErrorRate", "exp_alerts": []},
                ],
            },
            {  # two revisions take traffic for 40 minutes: stuck (threshold 30)
                "interval": "1m",
                "input_series": [
                    series(
                        {**MD, "revision": "encoder-a1", "environment": "cpu"},
                        "onnxship_router_backend_weight",
                        "90x45",
                    ),
                    series(
                        {**MD, "revision": "encoder-b2", "environment": "cpu"},
                        "onnxship_router_backend_weight",
                        "10x45",
                    ),
                ],
                "alert_rule_test": [
                    {"eval_time": "20m", "alertname": "OnnxshipRolloutStuck", "exp_alerts": []},
                    {
                        "eval_time": "40m",
                        "alertname": "OnnxshipRolloutStuck",
                        "exp_alerts": [
                            fired(
                                rules,
                                "OnnxshipRolloutStuck",
                                {"namespace": "ml", "onnxship_io_deployment": "encoder"},
                                "ModelDeployment ml/encoder has been canarying for "
                                "more than 30 minutes",
                            )
                        ],
                    },
                ],
            },
            {  # one revision at 100%: a finished rollout is not stuck
                "interval": "1m",
                "input_series": [
                    series(
                        {**MD, "revision": "encoder-b2", "environment": "cpu"},
                        "onnxship_router_backend_weight",
                        "100x45",
                    ),
                    series(
                        {**MD, "revision": "encoder-a1", "environment": "cpu"},
                        "onnxship_router_backend_weight",
                        "0x45",
                    ),
                    series(MD, "onnxship_router_mirror_percent", "0x45"),
                ],
                "alert_rule_test": [
                    {"eval_time": "40m", "alertname": "OnnxshipRolloutStuck", "exp_alerts": []},
                ],
            },
            {  # the analysis rolled a canary back: the operator's counter moves
                "interval": "1m",
                "input_series": [
                    series(
                        {"namespace": "onnxship-system", "outcome": "rolled_back"},
                        "onnxship_operator_rollouts_total",
                        "0 0 0 1 1 1 1 1",
                    ),
                    series(
                        {
                            "namespace": "onnxship-system",
                            "type": "Warning",
                            "reason": "AccuracyGateFailed",
                        },
                        "onnxship_operator_events_total",
                        "0 0 0 0 0 2 2 2",
                    ),
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "6m",
                        "alertname": "OnnxshipRolloutFailed",
                        "exp_alerts": [
                            fired(
                                rules,
                                "OnnxshipRolloutFailed",
                                {"namespace": "onnxship-system", "outcome": "rolled_back"},
                                "A rollout ended with rolled_back in the last 15 minutes",
                            )
                        ],
                    },
                    {
                        "eval_time": "6m",
                        "alertname": "OnnxshipDegraded",
                        "exp_alerts": [
                            fired(
                                rules,
                                "OnnxshipDegraded",
                                {"namespace": "onnxship-system", "reason": "AccuracyGateFailed"},
                                "onnxship posted AccuracyGateFailed warnings in the "
                                "last 15 minutes",
                            )
                        ],
                    },
                ],
            },
            {  # nothing scrapes the operator for 15 minutes
                "interval": "1m",
                "input_series": [
                    series({"job": "other"}, "up", "1x20"),
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "15m",
                        "alertname": "OnnxshipOperatorDown",
                        "exp_alerts": [
                            fired(
                                rules,
                                "OnnxshipOperatorDown",
                                {},
                                "No onnxship operator is up; ModelDeployments are not reconciled",
                            )
                        ],
                    },
                    {"eval_time": "5m", "alertname": "OnnxshipOperatorDown", "exp_alerts": []},
                ],
            },
            {  # the operator is scraped: nothing fires
                "interval": "1m",
                "input_series": [series({"job": "onnxship-metrics"}, "up", "1x20")],
                "alert_rule_test": [
                    {"eval_time": "15m", "alertname": "OnnxshipOperatorDown", "exp_alerts": []},
                ],
            },
        ],
    }


def test_alerts_fire_on_the_situations_they_name(rules_file: Path, tmp_path: Path) -> None:
    tests = tmp_path / "tests.yaml"
    tests.write_text(yaml.safe_dump(alert_tests(rules_file), sort_keys=False))
    proc = run_promtool("test", "rules", str(tests))
    assert proc.returncode == 0, proc.stdout + proc.stderr
