"""User commands (promote, abort, rollback...) travel as one annotation on the ModelDeployment.

Why an annotation rather than a status field or a spec field: `kubectl annotate` and RBAC on
the resource itself are enough to use it (status belongs to the controller, and a spec field
would make GitOps tools see drift and revert it); annotations do not bump the generation, so
no new revision is computed; and the command carries a unique id that status records once
handled, so a command is never applied twice, even across operator restarts.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any

from onnxship.plan.observed import Command, CommandKind

ANNOTATION = "onnxship.io/command"


def new_command(
    kind: CommandKind, revision: str = "", now: datetime | None = None
) -> dict[str, str]:
    moment = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return {"id": f"{moment}-{secrets.token_hex(3)}", "kind": kind.value, "revision": revision}


def annotation_patch(command: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"annotations": {ANNOTATION: json.dumps(command, sort_keys=True)}}}


def command_of(annotations: dict[str, str]) -> Command | None:
    """The command an object carries; None when absent or unreadable (it is ignored)."""
    raw = annotations.get(ANNOTATION)
    if not raw:
        return None
    try:
        data = json.loads(raw)
        return Command(
            id=str(data["id"]),
            kind=CommandKind(data["kind"]),
            revision=str(data.get("revision", "")),
        )
    except (ValueError, KeyError, TypeError):
        return None
