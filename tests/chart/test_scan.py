"""Security scans of the rendered chart: every finding is fixed or justified.

checkov (PyPI) always runs; its justifications live in tests/chart/checkov-skips.yaml, one
comment per skipped check. kube-linter runs where scripts/build-kube-linter.sh can build it: on
the project's machines the Go module proxy answers 403 Forbidden for
golang.stackrox.io/kube-linter, and that test skips with go's message. Its justifications are
ignore-check.kube-linter.io annotations on the objects.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import ROOT, VALUE_SETS, Helm

pytestmark = pytest.mark.timeout(1800)  # may build helm and install checkov (minutes, cold)

SKIPS = Path(__file__).with_name("checkov-skips.yaml")


def skipped_checks() -> dict[str, str]:
    """check id -> the reason written next to it."""
    out = {}
    for line in SKIPS.read_text().splitlines():
        line = line.strip()
        if line.startswith("- CKV"):
            check, _, why = line[2:].partition("#")
            out[check.strip()] = why.strip()
    return out


@pytest.fixture(scope="module")
def rendered(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every value set rendered into its own file, so that each optional object is scanned."""
    folder = tmp_path_factory.mktemp("rendered")
    for name, values in VALUE_SETS.items():
        (folder / f"{name}.yaml").write_text(helm.template(values).stdout)
    return folder


@pytest.fixture(scope="module")
def findings(rendered: Path, checkov_bin: Path) -> Any:
    folder = rendered
    proc = subprocess.run(
        [
            str(checkov_bin),
            "--quiet",
            "--compact",
            "--framework",
            "kubernetes",
            "--output",
            "json",
            "--skip-download",
            "-d",
            str(folder),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [c for r in reports for c in r.get("results", {}).get("failed_checks", [])]
    passed = sum(r.get("summary", {}).get("passed", 0) for r in reports)
    return failed, passed


@pytest.mark.slow  # installs checkov (~300 MB) on a fresh machine: `make chart-scan`
def test_every_finding_is_fixed_or_justified(findings: Any) -> None:
    failed, passed = findings
    assert passed > 100, f"checkov passed only {passed} checks: did it scan the manifests?"
    skips = skipped_checks()
    unjustified = sorted(
        {
            f"{c['check_id']} {c['check_name']} ({c['resource']})"
            for c in failed
            if c["check_id"] not in skips
        }
    )
    assert not unjustified, "fix, or justify in tests/chart/checkov-skips.yaml:\n" + "\n".join(
        unjustified
    )


@pytest.mark.slow  # installs checkov (~300 MB) on a fresh machine: `make chart-scan`
def test_every_justification_is_still_needed(findings: Any) -> None:
    """A skip whose check now passes everywhere is stale: remove it."""
    failed, _ = findings
    firing = {c["check_id"] for c in failed}
    stale = sorted(set(skipped_checks()) - firing)
    assert not stale, f"these checks no longer fire; drop them from {SKIPS.name}: {stale}"


def test_every_skip_says_why() -> None:
    skips = skipped_checks()
    assert skips
    for check, why in skips.items():
        assert len(why) > 20, f"{check}: say why it does not apply"
    yaml.safe_load(SKIPS.read_text())  # still a YAML file


def test_kube_linter_finds_nothing_unjustified(rendered: Path) -> None:
    build = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-kube-linter.sh")],
        capture_output=True,
        text=True,
        timeout=1700,
    )
    if build.returncode != 0:
        why = (build.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"kube-linter cannot be built from its Go module here: {why}")
    proc = subprocess.run(
        [
            str(ROOT / ".cache" / "bin" / "kube-linter"),
            "lint",
            "--config",
            str(Path(__file__).with_name("kube-linter.yaml")),
            str(rendered),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
