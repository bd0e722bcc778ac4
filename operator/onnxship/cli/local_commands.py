"""`onnxship status | promote | resume | abort | retry | rollback | apply | load` for local mode.

They act on the deployment that `onnxship up` runs from the same state folder (default
`.onnxship/`): status reads the files `up` writes; the others leave a command in the folder,
wait for `up` to take it, and print the resulting state.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from onnxship.api import SpecError

from .app import ExitCode, app, console, fail, out
from .up import STATE_DIR_OPTION, print_spec_error, resolve_deployment

NAME_ARGUMENT = typer.Argument(None, help="Deployment name; optional when there is only one.")


def _screen() -> Console:
    """stdout for tables: the terminal's width, or a wide page when piped (logs, CI, make)."""
    return out if out.is_terminal else Console(width=160, soft_wrap=False)


def _snapshot(state: Any) -> Any:
    from onnxship.api import ModelDeploymentStatus
    from onnxship.local.spec import parse_local
    from onnxship.local.view import RevisionStats, Snapshot

    status = state.read_status() or ModelDeploymentStatus()
    runtime = state.read_runtime() or {}
    running = state.running_pid() is not None
    spec = None
    applied = state.read_applied()
    if applied is not None:
        try:
            spec = parse_local(applied.document, Path(applied.base_dir), state.root, "").spec
        except SpecError:
            spec = None
    stats = {rev: RevisionStats.from_json(raw) for rev, raw in runtime.get("stats", {}).items()}
    return Snapshot(
        name=state.name,
        status=status,
        spec=spec,
        endpoint=runtime.get("endpoint", status.endpoint) if running else "",
        running=running,
        stats=stats,
        processes=runtime.get("processes", {}) if running else {},
        activity=runtime.get("activity", "") if running else "",
        problem=runtime.get("problem", "") if running else "",
        events=runtime.get("events", [])[-5:] if running else [],
    )


@app.command("status")
def status_command(
    name: str | None = NAME_ARGUMENT,
    state_dir: Path = STATE_DIR_OPTION,
    output: str = typer.Option("table", "--output", "-o", help="table | json"),
    watch: bool = typer.Option(False, "--watch", "-w", help="Refresh until Ctrl-C."),
) -> None:
    """Show a local deployment: phase, revisions, weights, requests, error rates."""
    from onnxship.local.view import render

    state = resolve_deployment(state_dir, name)
    if output == "json":
        snap = _snapshot(state)
        doc = {
            "name": state.name,
            "running": snap.running,
            "endpoint": snap.endpoint,
            "status": snap.status.to_wire(),
            "stats": {rev: st.to_json() for rev, st in snap.stats.items()},
            "processes": snap.processes,
            "events": snap.events,
            "cacheHits": (state.read_runtime() or {}).get("cacheHits", []),
        }
        print(json.dumps(doc, indent=2))
        return
    if not watch:
        _screen().print(render(_snapshot(state)))
        return
    from rich.live import Live

    with Live(render(_snapshot(state)), console=_screen(), refresh_per_second=2) as live:
        try:
            while True:
                time.sleep(0.5)
                live.update(render(_snapshot(state)))
        except KeyboardInterrupt:
            pass


def _send(state: Any, kind: str, wait: float, **args: Any) -> None:
    """Leave a command for the running `up`, wait until it is taken, print the new state."""
    from onnxship.local.view import render

    if state.running_pid() is None:
        fail(
            f"no `onnxship up` is running {state.name}; start it with `onnxship up FILE` "
            f"(or `onnxship up` to resume it)",
            ExitCode.conflict,
        )
    before = state.read_status()
    path = state.submit(kind, **args)
    deadline = time.monotonic() + wait
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if path.exists():
        fail(f"`onnxship up` did not take the {kind} command within {wait:.0f}s", ExitCode.failure)
    # The status moves on the next reconcile; give it a moment to show the effect.
    settle = time.monotonic() + 2.0
    while time.monotonic() < settle and state.read_status() == before:
        time.sleep(0.1)
    _screen().print(render(_snapshot(state)))


def _require_canary(state: Any, verb: str) -> None:
    status = state.read_status()
    if status is None or not status.canary_revision:
        stable = status.stable_revision if status else ""
        fail(
            f"{state.name} has no canary to {verb}" + (f" ({stable} is stable)" if stable else ""),
            ExitCode.conflict,
        )


WAIT_OPTION = typer.Option(10.0, "--wait", help="Seconds to wait for `up` to take it.")


def _canary_command(verb: str, doc: str) -> None:
    """Register `onnxship <verb> [NAME]`: a command about the canary, taken by `up`."""

    def command(
        name: str | None = NAME_ARGUMENT,
        state_dir: Path = STATE_DIR_OPTION,
        wait: float = WAIT_OPTION,
    ) -> None:
        state = resolve_deployment(state_dir, name)
        _require_canary(state, verb)
        _send(state, verb, wait)

    command.__doc__ = doc
    app.command(verb)(command)


_canary_command(
    "promote", "Send the canary to 100% now, skipping the remaining steps (also after an abort)."
)
_canary_command(
    "resume", "Leave the current pause (or an inconclusive step) and go on with the next step."
)
_canary_command(
    "abort", "Stop the canary: its weight goes to 0 and the stable revision serves everything."
)
_canary_command("retry", "Start an aborted canary again from its first step.")


@app.command("rollback")
def rollback_command(
    name: str | None = NAME_ARGUMENT,
    to: str = typer.Option("", "--to", help="Revision to serve; default: the one before stable."),
    state_dir: Path = STATE_DIR_OPTION,
    wait: float = WAIT_OPTION,
) -> None:
    """Serve an earlier revision again, from its stored artifact (no recompression)."""
    state = resolve_deployment(state_dir, name)
    status = state.read_status()
    known = [r.name for r in status.revisions] if status else []
    if to and to not in known:
        fail(
            f"{state.name} has no revision {to!r} (known: {', '.join(known) or 'none'})",
            ExitCode.not_found,
        )
    if not to and status is not None:
        older = [r for r in known if r not in (status.stable_revision, status.canary_revision)]
        if not older:
            fail(f"{state.name} has no earlier revision to roll back to", ExitCode.conflict)
    _send(state, "rollback", wait, revision=to)


@app.command("apply")
def apply_command(
    file: Path = typer.Argument(..., help="ModelDeployment YAML."),
    state_dir: Path = STATE_DIR_OPTION,
    wait: float = typer.Option(10.0, "--wait"),
) -> None:
    """Apply FILE to the running `onnxship up`: a changed model starts a new canary."""
    from onnxship.local.spec import SourceMissing, load_document, parse_local
    from onnxship.local.state import DeploymentState

    try:
        doc = load_document(file)
        local = parse_local(doc, file.parent.resolve(), state_dir, str(file))
    except SourceMissing as exc:
        print_spec_error(exc)
        raise typer.Exit(int(ExitCode.source_error)) from None
    except SpecError as exc:
        print_spec_error(exc)
        raise typer.Exit(int(ExitCode.invalid_spec)) from None
    state = DeploymentState(state_dir, local.name)
    if state.running_pid() is None:
        fail(
            f"no `onnxship up` is running {local.name}; run `onnxship up {file}` instead",
            ExitCode.conflict,
        )
    console.print(f"applying {file} to {local.name}", highlight=False)
    _send(
        state,
        "apply",
        wait,
        document=doc,
        baseDir=str(file.parent.resolve()),
        source=str(file.resolve()),
    )


@app.command("load")
def load_command(
    url: str = typer.Option("http://127.0.0.1:8080", "--url", help="Router (or server) address."),
    model: str = typer.Option(..., "--model", "-m", help="Model name (the deployment's name)."),
    rate: float = typer.Option(30.0, "--rate", help="Requests per second."),
    duration: float = typer.Option(10.0, "--duration", help="Seconds; 0 = until Ctrl-C."),
    concurrency: int = typer.Option(4, "--concurrency"),
    chat: bool = typer.Option(
        False, "--chat", help="A causal LM: streamed greedy chat completions (OpenAI's API)."
    ),
) -> None:
    """Send demo traffic (random token sentences, KServe v2 JSON; or streamed chat completions
    with --chat) and print what came back."""
    from onnxship.local.loadgen import LoadGenerator, chat_url, infer_url

    target = chat_url(url) if chat else infer_url(url, model)
    gen = LoadGenerator(
        target, rate=rate, concurrency=concurrency, chat_model=model if chat else ""
    ).start()
    try:
        deadline = time.monotonic() + duration if duration > 0 else float("inf")
        while time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    stats = gen.stop()
    p50, p99 = stats.percentile(0.5), stats.percentile(0.99)
    codes = ", ".join(f"{code or 'no answer'}: {n}" for code, n in sorted(stats.statuses.items()))
    out.print(
        f"{stats.sent} requests, {stats.ok} ok, error rate {stats.error_rate:.1%} ({codes}); "
        f"p50 {p50 or 0:.1f} ms, p99 {p99 or 0:.1f} ms"
        + (
            f"; time to first token p50 {stats.percentile(0.5, ttft=True) or 0:.1f} ms, "
            f"p99 {stats.percentile(0.99, ttft=True) or 0:.1f} ms"
            if chat
            else ""
        ),
        highlight=False,
    )
    if stats.sent and stats.ok == 0:
        raise typer.Exit(int(ExitCode.failure))
