"""The scripted demo behind `make demo`: one model's life on one machine, without a TTY.

It does what a user would do in two terminals:

1. builds the demo encoder (v1, v2, broken v3) with onnx.helper: nothing is downloaded;
2. `onnxship up examples/demo/v1.yaml`: v1 is compressed (int8), checked, stored under
   .onnxship/, served, and routed on http://127.0.0.1:8080;
3. sends traffic (KServe v2 JSON) through the router for the rest of the demo;
4. `onnxship apply v2.yaml`: v2 is canaried (mirror, 25%, 50%) to 100%;
5. `onnxship apply v3.yaml`: the broken v3 fails its canary analysis and is rolled back on
   its own, while users keep getting v2's answers;
6. prints a summary, stops `up` with Ctrl-C (SIGINT), and checks that no process is left.

Run it again: the artifacts are found in the store (cache hits) and nothing is recompressed.
Exit status 0 when the story happened as told, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from onnxship.api import ModelDeploymentStatus
from onnxship.local.loadgen import LoadGenerator, LoadStats, infer_url
from onnxship.local.processes import free_port, onnxship_command, port_in_use
from onnxship.local.state import DeploymentState, pid_alive

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import build_model  # noqa: E402  (the builder beside this script)

NAME = "encoder"
console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)


class DemoFailed(Exception):
    pass


def say(text: str) -> None:
    console.print(f"\n[bold magenta]▶ {text}[/]")


def version_of(status: ModelDeploymentStatus, revision: str) -> str:
    return next((r.model_version for r in status.revisions if r.name == revision), "")


def wait_for(
    state: DeploymentState,
    what: str,
    check: Callable[[ModelDeploymentStatus], bool],
    timeout: float,
    up: subprocess.Popen[bytes],
    resume_when_inconclusive: bool = False,
) -> ModelDeploymentStatus:
    deadline = time.monotonic() + timeout
    resumed = ""
    while time.monotonic() < deadline:
        if up.poll() is not None:
            raise DemoFailed(f"`onnxship up` exited with {up.returncode} while waiting for {what}")
        status = state.read_status()
        if status is not None and check(status):
            return status
        if (
            resume_when_inconclusive
            and status is not None
            and status.paused
            and not status.aborted
            and status.step_started_at != resumed
        ):
            # A busy machine can starve a step of requests: the analysis is inconclusive and
            # the canary waits for a person, who looks at it and says go on.
            say("the analysis was inconclusive (a busy machine?): onnxship resume")
            resumed = status.step_started_at
            cli("resume", "--state-dir", str(state.root), check=False)
        time.sleep(0.2)
    status = state.read_status()
    raise DemoFailed(
        f"timed out after {timeout:.0f}s waiting for {what} "
        f"(phase {status.phase if status else '?'}: {status.message if status else ''})"
    )


def cli(*args: str, check: bool = True) -> str:
    proc = subprocess.run(
        [*onnxship_command(), *args], capture_output=True, text=True, timeout=60, check=False
    )
    if check and proc.returncode != 0:
        raise DemoFailed(f"onnxship {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def summary(state: DeploymentState, users: LoadStats, v3_users: LoadStats) -> Table:
    status = state.read_status() or ModelDeploymentStatus()
    runtime = state.read_runtime() or {}
    stats = runtime.get("stats", {})
    table = Table(title=f"onnxship demo: {NAME}", header_style="bold")
    for col in (
        "revision",
        "model",
        "outcome",
        "size (MB)",
        "ratio",
        "cosine",
        "cache",
        "requests",
        "errors",
        "p50",
    ):
        table.add_column(col)
    for rev in status.revisions:
        env = rev.environments[0] if rev.environments else None
        comp = env.compression if env else None
        st = stats.get(rev.name, {})
        if rev.name == status.stable_revision:
            outcome = "[green]stable[/]"
        elif rev.name == status.canary_revision and status.aborted:
            outcome = "[red]rolled back[/]"
        else:
            outcome = "replaced"
        original = comp.original_bytes if comp else 0
        requests = int(st.get("requests", 0)) + int(st.get("mirrored", 0))
        p50 = st.get("p50Ms")
        table.add_row(
            rev.name,
            rev.model_version,
            outcome,
            f"{original / 1e6:.1f} → {rev.size_bytes / 1e6:.1f}",
            f"{rev.compression_ratio:.2f}",
            f"{rev.accuracy:.4f}" if rev.accuracy is not None else "-",
            "hit" if comp and comp.cache_hit else "compressed",
            str(requests),
            str(st.get("errors", 0)),
            f"{p50:.1f} ms" if p50 is not None else "-",
        )
    table.caption = (
        f"users: {users.sent} requests, {users.error_rate:.1%} errors, "
        f"p50 {users.percentile(0.5) or 0:.1f} ms; during the v3 canary: {v3_users.sent} "
        f"requests, {v3_users.error_rate:.1%} errors"
    )
    return table


def fresh_state(state_dir: Path, name: str) -> DeploymentState:
    """The deployment ``name`` starting over; the store beside it stays, so artifacts are
    cache hits."""
    state = DeploymentState(state_dir, name)
    if state.running_pid():
        raise DemoFailed(f"an `onnxship up` already runs {name} from {state_dir}/; stop it first")
    if state.dir.exists():
        shutil.rmtree(state.dir)
        console.print(
            f"  starting {name} over (artifacts in {state_dir}/ are kept: expect cache hits)"
        )
    return state


def start_up(spec: Path, port: int, state_dir: Path) -> subprocess.Popen[bytes]:
    """`onnxship up SPEC` as a user starts it in a terminal (plain progress lines)."""
    say(f"onnxship up {shown(spec)}")
    return subprocess.Popen(
        [
            *onnxship_command(),
            "up",
            str(spec),
            "--port",
            str(port),
            "--ui",
            "plain",
            "--serve-threads",
            "1",
            "--state-dir",
            str(state_dir),
        ],
        env={**os.environ, "ONNXSHIP_LOG_FORMAT": "text"},
    )


def stop_up(up: subprocess.Popen[bytes], state: DeploymentState) -> bool:
    """Ctrl-C (SIGINT) to `onnxship up`; True when it exited 0 and left no child process
    (any left is killed and counted)."""
    say("Ctrl-C (SIGINT) to onnxship up")
    pids = (state.read_runtime() or {}).get("pids", [])
    if up.poll() is None:
        up.send_signal(signal.SIGINT)
    try:
        code = up.wait(30)
    except subprocess.TimeoutExpired:
        up.kill()
        code = up.wait()
    left = [p for p in pids if pid_alive(p)]
    console.print(f"  onnxship up exited with {code}; child processes left: {len(left)}")
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return code == 0 and not left


def diff(after: LoadStats, before: LoadStats) -> LoadStats:
    return LoadStats(
        after.sent - before.sent,
        after.ok - before.ok,
        after.statuses - before.statuses,
        after.latencies_ms[len(before.latencies_ms) :],
    )


def shown(path: Path) -> Path:
    """``path`` relative to the current folder when it is inside it (shorter to read)."""
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    state_dir = Path(args.state_dir)
    say("building the demo models (a 4-layer transformer encoder, v1, v2 and a broken v3)")
    for name, path in build_model.build(HERE / "models").items():
        console.print(f"  {name}: {shown(path)}")
    state = fresh_state(state_dir, NAME)
    port = args.port if not port_in_use(args.port) else free_port()
    endpoint = f"http://127.0.0.1:{port}"
    state_args = ["--state-dir", str(state_dir)]
    up = start_up(HERE / "v1.yaml", port, state_dir)
    load: LoadGenerator | None = None
    ok = False
    try:
        status = wait_for(
            state,
            "v1 to be stable",
            lambda s: s.phase == "Ready" and version_of(s, s.stable_revision) == "v1",
            args.timeout,
            up,
        )
        say(f"v1 is stable ({status.stable_revision}); sending traffic to {endpoint}")
        load = LoadGenerator(infer_url(endpoint, NAME), rate=args.rate, concurrency=4).start()
        time.sleep(2)

        say("onnxship apply v2.yaml  (a fine-tune: canary mirror → 25% → 50% → 100%)")
        cli("apply", str(HERE / "v2.yaml"), *state_args)
        status = wait_for(
            state,
            "v2 to be promoted to stable",
            lambda s: s.phase == "Ready" and version_of(s, s.stable_revision) == "v2",
            args.timeout,
            up,
            resume_when_inconclusive=True,
        )
        say(f"v2 is stable ({status.stable_revision})")
        time.sleep(1)

        before_v3 = load.stats.copy()
        say("onnxship apply v3.yaml  (a broken export: the analysis should roll it back)")
        cli("apply", str(HERE / "v3.yaml"), *state_args)
        status = wait_for(
            state,
            "v3 to be rolled back",
            lambda s: s.aborted and version_of(s, s.canary_revision) == "v3",
            args.timeout,
            up,
        )
        say(f"v3 rolled back: {status.message}")
        time.sleep(1)
        v3_users = diff(load.stats.copy(), before_v3)
        users = load.stop()
        load = None

        say("onnxship status")
        print(cli("status", NAME, *state_args), end="")
        Console(width=None if sys.stdout.isatty() else 140).print(summary(state, users, v3_users))
        runtime = state.read_runtime() or {}
        if runtime.get("cacheHits"):
            console.print(f"cache hits: {', '.join(runtime['cacheHits'])}")
        if users.ok == 0:
            raise DemoFailed("no request succeeded through the router")
        ok = True
    finally:
        if load is not None:
            load.stop()
        if not stop_up(up, state):
            ok = False
    console.print(
        f"\n[bold {'green' if ok else 'red'}]demo {'done' if ok else 'FAILED'}[/] "
        f"in {time.monotonic() - started:.0f}s"
    )
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", default=".onnxship")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds per stage")
    args = parser.parse_args()
    try:
        sys.exit(run(args))
    except DemoFailed as exc:
        console.print(f"[bold red]demo failed:[/] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
