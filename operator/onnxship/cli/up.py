"""`onnxship up FILE`: the whole flow on one machine, in the foreground.

Like `docker compose up`: it compresses, stores, serves and canaries the model in FILE, shows
a live view, follows FILE (and `onnxship apply`) as it changes, and on Ctrl-C stops every
process it started. The state folder keeps the artifacts and the status for the next run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import typer

from onnxship.api import SpecError

from .app import ExitCode, app, console, fail

STATE_DIR_OPTION = typer.Option(
    Path(".onnxship"),
    "--state-dir",
    envvar="ONNXSHIP_STATE_DIR",
    help="State folder: the file:// artifact store and the local deployments' status.",
)


def print_spec_error(exc: SpecError) -> None:
    console.print(f"[bold red]error:[/] {exc}", highlight=False)


def resolve_deployment(state_dir: Path, name: str | None) -> Any:
    """The local deployment NAME, or the only one in the state folder."""
    from onnxship.local.state import DeploymentState, deployments

    names = deployments(state_dir)
    if name:
        if name not in names:
            known = ", ".join(names) or "none"
            fail(
                f"no local deployment {name!r} in {state_dir}/ (known: {known}); "
                "start one with `onnxship up FILE`",
                ExitCode.not_found,
            )
        return DeploymentState(state_dir, name)
    if not names:
        fail(
            f"no local deployment in {state_dir}/; start one with `onnxship up FILE`",
            ExitCode.not_found,
        )
    if len(names) > 1:
        fail(
            f"{state_dir}/ holds several deployments ({', '.join(names)}); name one",
            ExitCode.usage,
        )
    return DeploymentState(state_dir, names[0])


@app.command("up")
def up_command(
    file: Path | None = typer.Argument(
        None, help="ModelDeployment YAML; omit it to resume the deployment in the state folder."
    ),
    port: int = typer.Option(8080, "--port", "-p", envvar="ONNXSHIP_PORT", help="Router port."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address the router and servers bind."),
    state_dir: Path = STATE_DIR_OPTION,
    watch: bool = typer.Option(True, "--watch/--no-watch", help="Re-apply FILE when it changes."),
    ui: str = typer.Option(
        "auto", "--ui", help="live: a live table; plain: one line per event; auto: live on a TTY."
    ),
    threads: int = typer.Option(0, "--serve-threads", help="Threads per server (0 = the spec's)."),
) -> None:
    """Run a ModelDeployment on this machine: compress, store, serve, canary, roll back."""
    from onnxship.local.driver import LocalDriver, UpOptions
    from onnxship.local.processes import port_in_use
    from onnxship.local.spec import SourceMissing, load_document, parse_local
    from onnxship.local.state import AppliedDocument, DeploymentState

    if file is not None:
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
    else:
        state = resolve_deployment(state_dir, None)

    running = state.running_pid()
    if running and running != os.getpid():
        fail(
            f"`onnxship up` is already running {state.name} (pid {running}); use "
            f"`onnxship apply FILE` or `onnxship status` from this terminal",
            ExitCode.conflict,
        )
    if port_in_use(port, host):
        fail(f"port {port} on {host} is in use; pick another with --port", ExitCode.conflict)

    if file is not None:
        previous = state.read_applied()
        generation = previous.generation if previous else 0
        if previous is None or previous.document != doc:
            generation += 1
        state.write_applied(
            AppliedDocument(doc, str(file.parent.resolve()), str(file.resolve()), generation)
        )

    live = ui == "live" or (ui == "auto" and sys.stderr.isatty())

    def on_event(kind: str, text: str) -> None:
        if live:
            return
        style = {"warning": "yellow", "status": "bold"}.get(kind, "")
        stamp = time.strftime("%H:%M:%S")
        console.print(f"{stamp} {text}", style=style, highlight=False, soft_wrap=True)

    try:
        driver = LocalDriver(
            state, UpOptions(host=host, port=port, watch=watch, serve_threads=threads), on_event
        )
    except SpecError as exc:
        print_spec_error(exc)
        raise typer.Exit(int(ExitCode.invalid_spec)) from None

    # The events are this command's output; library logs would repeat them (or, in the
    # live view, tear it). Warnings still reach the log stream.
    local_log = logging.getLogger("onnxship.local")
    local_log.propagate = False
    local_log.addHandler(logging.NullHandler())
    for quiet in ("onnxship.compress", "onnxship.store"):
        if logging.getLogger(quiet).getEffectiveLevel() < logging.WARNING:
            logging.getLogger(quiet).setLevel(logging.WARNING)

    stop = threading.Event()
    signals = [signal.SIGINT, signal.SIGTERM]
    previous_handlers = {s: signal.getsignal(s) for s in signals}

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set():  # a second Ctrl-C: stop waiting politely
            raise KeyboardInterrupt
        stop.set()

    for s in signals:
        signal.signal(s, on_signal)
    console.print(
        f"onnxship up: {state.name} on http://{host}:{port} (state in {state_dir}/; Ctrl-C stops)",
        highlight=False,
    )
    try:
        try:
            driver.start()
        except SourceMissing as exc:
            print_spec_error(exc)
            raise typer.Exit(int(ExitCode.source_error)) from None
        except SpecError as exc:
            print_spec_error(exc)
            raise typer.Exit(int(ExitCode.invalid_spec)) from None
        if not driver.router or not driver.router.wait_ready(30):
            tail = driver.router.log_tail() if driver.router else ""
            fail(f"the router did not start on port {port}:\n{tail}", ExitCode.failure)
        _loop(driver, stop, live)
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            console.print("stopping: router and servers…", highlight=False)
            driver.shutdown()
            for s, h in previous_handlers.items():
                signal.signal(s, h)
    console.print(
        f"stopped. {state.name}: {driver.status.phase}; artifacts and status kept in {state_dir}/",
        highlight=False,
    )


def _loop(driver: Any, stop: threading.Event, live: bool) -> None:
    from rich.live import Live

    from onnxship.local.view import render

    tick = driver.options.tick_seconds
    if not live:
        while not stop.is_set():
            _tick(driver)
            stop.wait(tick)
        return
    with Live(
        render(driver.snapshot()), console=console, refresh_per_second=4, transient=False
    ) as view:
        while not stop.is_set():
            _tick(driver)
            view.update(render(driver.snapshot()))
            stop.wait(tick)
    if not console.is_terminal:
        console.line()  # the last frame does not end its line when it is not a terminal


def _tick(driver: Any) -> None:
    """One reconcile; a failure is shown and retried on the next tick, like a controller's."""
    try:
        driver.tick()
        if driver.problem.startswith("internal error"):
            driver.problem = ""
    except Exception as exc:  # the children keep serving; the user sees what went wrong
        message = f"internal error (retrying): {type(exc).__name__}: {exc}"
        if driver.problem != message:
            driver.problem = message
            driver.report("warning", message)
            logging.getLogger("onnxship.local.up").debug("tick failed", exc_info=True)
