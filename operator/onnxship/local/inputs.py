"""What the user asks of `onnxship up`: the applied document and commands.

A document comes from the watched source file or from `onnxship apply` (a command in the
state folder); it is validated before it replaces the applied one, whose generation then
goes up. Other commands (promote, resume, abort, retry, rollback) wait in a queue; the plan
sees the oldest, and it leaves the queue once the status says it was handled. The cluster's
counterparts are the ModelDeployment's spec and its command annotation.
"""

from __future__ import annotations

import itertools
from collections import deque
from pathlib import Path
from typing import Any

from onnxship.api import ModelDeploymentStatus, SpecError
from onnxship.plan.observed import Command, CommandKind

from .events import Feed
from .spec import LocalSpec, load_document, mtime, parse_local
from .state import AppliedDocument, DeploymentState


class Inputs:
    def __init__(self, state: DeploymentState, feed: Feed) -> None:
        self.state = state
        self.feed = feed
        applied = state.read_applied()
        if applied is None:
            raise SpecError(str(state.deployment_path), ["(file): no deployment was applied"])
        self.applied = applied
        self.local: LocalSpec | None = None
        self.source_mtime = 0.0
        self.commands: deque[Command] = deque()
        self.command_ids = itertools.count()

    def load(self) -> None:
        """Parse the applied document (SpecError when it no longer holds)."""
        applied = self.applied
        self.local = parse_local(
            applied.document,
            Path(applied.base_dir),
            self.state.root,
            applied.source or "deployment",
        )
        if applied.source:
            self.source_mtime = mtime(Path(applied.source))
        self._note_differences()

    # ------------------------------------------------------------ commands

    @property
    def command(self) -> Command | None:
        """The oldest command the plan has not handled yet."""
        return self.commands[0] if self.commands else None

    def handled(self, command: Command | None, status: ModelDeploymentStatus) -> None:
        if command is not None and status.last_command == command.id:
            self.commands.popleft()  # handled (or rejected, with an event saying why)

    def take_commands(self) -> None:
        for cmd in self.state.take_commands():
            if cmd.kind == "apply":
                doc = cmd.args.get("document")
                base_dir = cmd.args.get("baseDir", ".")
                source = cmd.args.get("source", "")
                self._apply_document(doc, Path(base_dir), source)
                continue
            kind = CommandKind(cmd.kind)
            self.commands.append(
                Command(
                    id=f"{int(cmd.issued_at * 1000)}-{next(self.command_ids)}",
                    kind=kind,
                    revision=str(cmd.args.get("revision", "")),
                )
            )
            self.feed("info", f"command: {cmd.kind} {cmd.args.get('revision', '')}".rstrip())

    # ------------------------------------------------------------ the document

    def watch_source(self) -> None:
        """Re-apply the source file when it changed on disk."""
        source = self.applied.source
        if not source:
            return
        path = Path(source)
        current = mtime(path)
        if current == self.source_mtime or current == 0.0:
            return
        self.source_mtime = current
        try:
            doc = load_document(path)
        except SpecError as exc:
            self.feed.problem = str(exc)
            return
        if doc != self.applied.document:
            self._apply_document(doc, path.parent.resolve(), str(path))

    def _apply_document(self, doc: Any, base_dir: Path, source: str) -> None:
        """A new document from the watched file or `onnxship apply`: validate, then adopt."""
        try:
            local = parse_local(doc, base_dir, self.state.root, source or "the applied document")
        except SpecError as exc:
            self.feed.problem = str(exc)
            self.feed("warning", f"not applied: {exc}")
            return
        if local.name != self.state.name:
            self.feed.problem = (
                f"{source}: metadata.name is {local.name!r}, but this `up` drives "
                f"{self.state.name!r}; run a second `onnxship up` for another deployment"
            )
            return
        self.feed.problem = ""
        if doc == self.applied.document and local == self.local:
            return
        self.applied = AppliedDocument(doc, str(base_dir), source, self.applied.generation + 1)
        self.state.write_applied(self.applied)
        if source:
            self.source_mtime = mtime(Path(source))
        self.local = local
        self.feed(
            "info", f"applied {source or 'a new spec'} (generation {self.applied.generation})"
        )
        self._note_differences()

    def _note_differences(self) -> None:
        """Say once what local mode does differently from the cluster for this spec."""
        if self.local is None:
            return
        spec = self.local.spec
        notes = []
        if spec.rollout.analysis.provider != "builtin":
            notes.append("analysis reads the local router's metrics, not Prometheus")
        if spec.rollout.traffic.router != "builtin":
            notes.append("traffic goes through the local router, not Gateway API")
        if any(
            r > 1
            for r in (spec.serving.replicas, *(e.replicas or 0 for e in spec.serving.environments))
        ):
            notes.append("one server process per environment, whatever serving.replicas says")
        if spec.artifacts.credentials_secret or spec.model.credentials_secret:
            notes.append(
                "credentialsSecret is a cluster Secret: credentials come from this shell's "
                "environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE)"
            )
        for note in notes:
            self.feed("info", f"local mode: {note}")
