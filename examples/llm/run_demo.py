"""The scripted demo behind `make demo-llm`: a chat model's life on one machine, without a TTY.

The LLM twin of examples/demo/run_demo.py (whose machinery it reuses): it

1. builds the demo decoder (v1, v2 = the same weights, a broken v3) with onnx.helper, in ONNX
   Runtime GenAI's folder layout: nothing is downloaded;
2. `onnxship up examples/llm/v1.yaml`: v1 is compressed to int8 weight-only, checked by the
   generation gate (teacher-forced top-1, KL, free-run tokens), served (OpenAI API) and routed
   on http://127.0.0.1:8080;
3. streams greedy chat completions through the router for the rest of the demo, timing each
   answer's first token and noting which revision answered;
4. `onnxship apply v2.yaml` (int4): mirrored (greedy copies compared token by token with v1's
   answers), then half the traffic, then stable;
5. `onnxship apply v3.yaml`: its mirrored answers disagree with v2's, the analysis rolls it
   back, and users keep getting v2's streams;
6. prints a summary, stops `up` with Ctrl-C (SIGINT), and checks that no process is left.

Exit status 0 when the story happened as told, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

from rich.console import Console
from rich.table import Table

from onnxship.api import ModelDeploymentStatus
from onnxship.local.loadgen import LoadGenerator, LoadStats, chat_url
from onnxship.local.processes import free_port, port_in_use
from onnxship.local.state import DeploymentState

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import build_models  # noqa: E402  (the builder beside this script)


def _encoder_demo() -> ModuleType:
    """examples/demo/run_demo.py, whose helpers (stages, CLI calls, shutdown) this demo shares."""
    path = HERE.parent / "demo" / "run_demo.py"
    spec = importlib.util.spec_from_file_location("encoder_demo", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


demo = _encoder_demo()
DemoFailed, console, say, cli = demo.DemoFailed, demo.console, demo.say, demo.cli
NAME = "chat"


def ms(value: float | None) -> str:
    return f"{value:.0f}" if value is not None else "-"


def summary(
    state: DeploymentState, users: LoadStats, v3_users: LoadStats, seconds: float
) -> Table:
    status = state.read_status() or ModelDeploymentStatus()
    stats = (state.read_runtime() or {}).get("stats", {})
    table = Table(title=f"onnxship demo-llm: {NAME}", header_style="bold")
    for col in (
        "revision", "model", "variant", "outcome", "size (MB)", "top-1", "KL", "tokens",
        "live tokens", "TTFT p50/p99 (ms)", "answers", "mirrored", "cache",
    ):  # fmt: skip
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
        live = st.get("tokenAgreement")
        table.add_row(
            rev.name,
            rev.model_version,
            comp.variant if comp else "",
            outcome,
            f"{(comp.original_bytes if comp else 0) / 1e6:.1f} → {rev.size_bytes / 1e6:.1f}",
            f"{comp.top1:.3f}" if comp and comp.top1 is not None else "-",
            f"{comp.kl_mean:.4f}" if comp and comp.kl_mean is not None else "-",
            f"{comp.token_agreement:.3f}" if comp and comp.token_agreement is not None else "-",
            f"{live:.3f}" if live is not None else "-",
            f"{ms(users.percentile(0.5, revision=rev.name))} / "
            f"{ms(users.percentile(0.99, revision=rev.name))}",
            str(users.by_revision.get(rev.name, 0)),
            str(int(st.get("mirrored", 0))),
            "hit" if comp and comp.cache_hit else "compressed",
        )
    table.caption = (
        "top-1 / KL / tokens: the generation gate, compressed against its own original; live "
        "tokens: mirrored greedy answers against stable's; TTFT and answers: the users' streams "
        f"by the revision that answered.\nusers: {users.sent} streamed chats, "
        f"{users.error_rate:.1%} errors, TTFT p50 {ms(users.percentile(0.5, ttft=True))} ms "
        f"p99 {ms(users.percentile(0.99, ttft=True))} ms; during the v3 canary: {v3_users.sent} "
        f"chats, {v3_users.error_rate:.1%} errors, answered by "
        f"{', '.join(f'{r} ({n})' for r, n in v3_users.by_revision.items()) or 'none'}.\n"
        f"rolled back: {status.message}\ntotal {seconds:.0f} s"
    )
    return table


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    state_dir = Path(args.state_dir)
    say("building the demo decoder (2 layers, SmolLM2's tokenizer: v1, v2 and a broken v3)")
    for name, path in build_models.build(HERE / "models").items():
        console.print(f"  {name}: {demo.shown(path)}")
    state = demo.fresh_state(state_dir, NAME)
    port = args.port if not port_in_use(args.port) else free_port()
    endpoint = f"http://127.0.0.1:{port}"
    state_args = ["--state-dir", str(state_dir)]
    up = demo.start_up(HERE / "v1.yaml", port, state_dir)
    wait_for = demo.wait_for
    version_of = demo.version_of
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
        say(f"v1 is stable ({status.stable_revision}); streaming chat completions to {endpoint}")
        load = LoadGenerator(
            chat_url(endpoint), rate=args.rate, concurrency=4, chat_model=NAME
        ).start()
        time.sleep(2)

        say("onnxship apply v2.yaml  (int4: mirrored and compared token by token → 50% → 100%)")
        cli("apply", str(HERE / "v2.yaml"), *state_args)
        status = wait_for(
            state,
            "v2 to be promoted to stable",
            lambda s: s.aborted
            or (s.phase == "Ready" and version_of(s, s.stable_revision) == "v2"),
            args.timeout,
            up,
            resume_when_inconclusive=True,
        )
        if status.aborted:
            raise DemoFailed(f"v2 was rolled back: {status.message}")
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
        time.sleep(2)
        after = load.stats.copy()
        v3_users = demo.diff(after, before_v3)
        v3_users.by_revision = after.by_revision - before_v3.by_revision
        users = load.stop()
        load = None

        say("onnxship status")
        print(cli("status", NAME, *state_args), end="")
        Console(width=None if sys.stdout.isatty() else 200).print(
            summary(state, users, v3_users, time.monotonic() - started)
        )
        if users.ok == 0 or not users.ttft_ms:
            raise DemoFailed("no streamed answer came through the router")
        if v3_users.errors:
            raise DemoFailed(f"users saw errors during the v3 canary: {v3_users.statuses}")
        ok = True
    finally:
        if load is not None:
            load.stop()
        if not demo.stop_up(up, state):
            ok = False
    console.print(
        f"\n[bold {'green' if ok else 'red'}]demo-llm {'done' if ok else 'FAILED'}[/] "
        f"in {time.monotonic() - started:.0f}s"
    )
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--state-dir", default=".onnxship")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--rate", type=float, default=4.0, help="chats per second")
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds per stage")
    args = parser.parse_args()
    try:
        sys.exit(run(args))
    except DemoFailed as exc:
        console.print(f"[bold red]demo-llm failed:[/] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
