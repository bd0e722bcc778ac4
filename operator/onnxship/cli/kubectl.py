"""`kubectl onnxship ...`: act on ModelDeployments in a cluster (a kubectl plugin).

Commands travel as the `onnxship.io/command` annotation (see controller/commands.py for
why); the plugin then waits until status says the operator handled it.
"""

from __future__ import annotations

import time
from typing import Any

import typer
from rich.table import Table

from onnxship.plan.observed import CommandKind

from .app import ExitCode, fail, out

plugin = typer.Typer(
    name="kubectl-onnxship",
    help="Promote, abort, resume, retry or roll back a ModelDeployment; show its status.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

NAMESPACE = typer.Option("default", "--namespace", "-n", envvar="ONNXSHIP_NAMESPACE")
WAIT = typer.Option(30.0, "--wait", help="Seconds to wait for the operator; 0 = do not wait.")


def _kube() -> Any:
    from kubernetes.config import ConfigException

    from onnxship.controller.kube import Kube

    try:
        return Kube.from_environment()
    except (ConfigException, OSError) as exc:
        fail(f"no cluster to talk to: {exc}", ExitCode.failure)


def _get(kube: Any, namespace: str, name: str) -> dict[str, Any]:
    obj = kube.get("ModelDeployment", namespace, name)
    if obj is None:
        fail(f"modeldeployment {namespace}/{name} not found", ExitCode.not_found)
    return obj  # type: ignore[no-any-return]


def status_table(obj: dict[str, Any]) -> Table:
    st = obj.get("status") or {}
    table = Table(
        title=f"{obj['metadata']['namespace']}/{obj['metadata']['name']}", show_header=False
    )
    for label, value in (
        ("phase", st.get("phase", "")),
        ("message", st.get("message", "")),
        ("stable", st.get("stableRevision", "")),
        ("canary", st.get("canaryRevision", "")),
        ("weight", f"{st.get('canaryWeight', 0)}%"),
        ("step", str(st.get("currentStep", 0))),
        ("endpoint", st.get("endpoint", "")),
    ):
        table.add_row(label, str(value))
    for c in st.get("conditions", []):
        table.add_row(
            f"  {c['type']}", f"{c['status']} {c.get('reason', '')}: {c.get('message', '')}"
        )
    return table


@plugin.command("status")
def status(name: str, namespace: str = NAMESPACE) -> None:
    """Phase, revisions, weight, step and conditions."""
    out.print(status_table(_get(_kube(), namespace, name)))


def _send(name: str, namespace: str, kind: CommandKind, revision: str, wait: float) -> None:
    from onnxship.controller.commands import annotation_patch, new_command

    kube = _kube()
    _get(kube, namespace, name)
    command = new_command(kind, revision)
    kube.patch("ModelDeployment", namespace, name, annotation_patch(command))
    out.print(f"{kind.value} sent to {namespace}/{name} (command {command['id']})")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        obj = _get(kube, namespace, name)
        if (obj.get("status") or {}).get("lastCommand") == command["id"]:
            out.print(status_table(obj))
            return
        time.sleep(0.5)
    if wait:
        fail(
            f"the operator did not take the command within {wait:g}s: is it running?",
            ExitCode.failure,
        )


def _command(kind: CommandKind, doc: str) -> None:
    def run(name: str, namespace: str = NAMESPACE, wait: float = WAIT) -> None:
        _send(name, namespace, kind, "", wait)

    run.__doc__ = doc
    plugin.command(kind.value)(run)


_command(CommandKind.promote, "Skip the remaining steps: the canary takes 100%.")
_command(CommandKind.resume, "Leave the current pause and go on with the steps.")
_command(CommandKind.abort, "Send all traffic back to stable; the canary is kept at weight 0.")
_command(CommandKind.retry, "Start an aborted canary again from its first step.")


@plugin.command("rollback")
def rollback(
    name: str,
    to: str = typer.Option("", "--to", help="Revision to serve (default: the previous one)."),
    namespace: str = NAMESPACE,
    wait: float = WAIT,
) -> None:
    """Serve an earlier revision again, from its stored artifact (no recompression)."""
    _send(name, namespace, CommandKind.rollback, to, wait)


def main() -> None:
    plugin()
