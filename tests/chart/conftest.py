"""Fixtures of the chart tests: a real helm binary, built by scripts/build-helm.sh when missing.

helm is built from its Go module (no registry ships it); the build is cached under .cache/bin
and reuses Go's build cache, so only the first run on a machine pays for it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "onnxship"
HELM = ROOT / ".cache" / "bin" / "helm"
CHECKOV = ROOT / ".cache" / "checkov" / "bin" / "checkov"
NAMESPACE = "onnxship-system"
RELEASE = "onnxship"


def _run_script(script: str, what: str, missing_tool: str) -> None:
    if shutil.which(missing_tool) is None:
        pytest.skip(f"{what}: '{missing_tool}' is not on PATH, so {script} cannot run")
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / script)], capture_output=True, text=True, timeout=1700
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/{script} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    """The helm binary, built from helm.sh/helm/v3 by scripts/build-helm.sh if needed."""
    if shutil.which("go") is None and HELM.exists():
        return HELM  # built before; the script would only check its version
    _run_script("build-helm.sh", "helm is built from its Go module", "go")
    assert HELM.exists(), "scripts/build-helm.sh succeeded but left no .cache/bin/helm"
    return HELM


@pytest.fixture(scope="session")
def checkov_bin() -> Path:
    _run_script("install-checkov.sh", "checkov is installed from PyPI into .cache/", "python3")
    return CHECKOV


class Helm:
    def __init__(self, binary: Path) -> None:
        self.binary = binary

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, timeout=120
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
        return proc

    @staticmethod
    def value_args(values: dict[str, Any] | None, sets: Iterable[str] = ()) -> list[str]:
        args: list[str] = []
        if values:
            # JSON is YAML: one --set-json per top-level key keeps types exact.
            for key, value in values.items():
                args += ["--set-json", f"{key}={json.dumps(value)}"]
        for s in sets:
            args += ["--set", s]
        return args

    def template(
        self,
        values: dict[str, Any] | None = None,
        sets: Iterable[str] = (),
        namespace: str = NAMESPACE,
        check: bool = True,
        extra: Iterable[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            namespace,
            *self.value_args(values, sets),
            *extra,
            check=check,
        )

    def render(
        self, values: dict[str, Any] | None = None, sets: Iterable[str] = (), **kw: Any
    ) -> list[dict[str, Any]]:
        """The rendered manifests (templates only; `--include-crds` is added by callers)."""
        out = self.template(values, sets, **kw).stdout
        return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="session")
def helm(helm_bin: Path) -> Helm:
    return Helm(helm_bin)


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    workloads = find(docs, "Deployment") + find(docs, "StatefulSet")
    assert len(workloads) == 1, [w["kind"] for w in workloads]
    containers = workloads[0]["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "operator")


# Value sets rendered by the lint, schema and scan tests: the defaults, and one per shape
# that changes which objects exist.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "ha-cluster": {
        "replicas": 3,
        "store": {
            "uri": "s3://onnxship-artifacts/prod/",
            "endpoint": "http://minio.storage:9000",
            "region": "us-east-1",
            "credentialsSecret": "s3-creds",
        },
    },
    "ha-namespaced-monitoring": {
        "replicas": 2,
        "watchNamespaces": ["ml"],
        "image": {"digest": "sha256:" + "a" * 64},
        "monitoring": {
            "serviceMonitor": {"enabled": True},
            "podMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
            "grafanaDashboard": {"enabled": True, "namespace": "monitoring"},
        },
        "workloads": {"serviceAccountName": "models", "routerReplicas": 2},
    },
}


@pytest.fixture(params=sorted(VALUE_SETS))
def value_set(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return request.param, VALUE_SETS[request.param]


RenderFn = Callable[..., list[dict[str, Any]]]
