"""The local driver: observe, plan, execute, with processes instead of pods.

Each tick reads what the user asks (the applied document, commands from other terminals),
observes the world (``observe``: compression jobs, server processes, the router's table,
the analysis verdict), hands it to ``onnxship.plan.rollout.step`` (the same function the
operator calls), applies the actions it returns (``execute``), measures the canary when the
plan asks (``analysis``) and writes the status to the state folder. It decides nothing
about the rollout itself.

The parts, by job: ``inputs`` (document and commands), ``compression`` (the local
compression Job), ``servers`` (`onnxship serve` per revision, supervised), ``routing`` (the
router process and its table), ``analysis`` (the router's metrics, judged), ``events``
(what the user is told).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime

from onnxship.api import ModelDeploymentStatus, RevisionStatus
from onnxship.plan.rollout import step

from .analysis import RouterAnalysis
from .compression import Compressions
from .events import Feed
from .execute import Executor
from .inputs import Inputs
from .observe import Observer
from .options import UpOptions
from .processes import Child
from .routing import RouterProcess
from .servers import Servers
from .state import DeploymentState
from .view import Snapshot

__all__ = ["LocalDriver", "UpOptions"]


def now_utc() -> datetime:
    return datetime.now(UTC)


class LocalDriver:
    """Drives one local deployment; ``tick()`` is one reconcile, ``shutdown()`` stops children."""

    def __init__(
        self,
        state: DeploymentState,
        options: UpOptions,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        self.state = state
        self.options = options
        self.feed = Feed(on_event)
        self.status = state.read_status() or ModelDeploymentStatus()
        self.inputs = Inputs(state, self.feed)  # SpecError when nothing was applied
        self.compressions = Compressions(self.feed)
        self.servers = Servers(state, options, self.feed)
        self.routing = RouterProcess(state, options, self.feed)
        self.executor = Executor(self.servers, self.routing, options, self.feed)
        self.endpoint = self.routing.endpoint
        self.analysis = RouterAnalysis(self.endpoint)
        self.observer = Observer(
            self.compressions, self.servers, self.routing, self.analysis, self.feed
        )
        self.started_at = time.time()

    @property
    def router(self) -> Child | None:
        return self.routing.child

    @property
    def problem(self) -> str:
        return self.feed.problem

    @problem.setter
    def problem(self, text: str) -> None:
        self.feed.problem = text

    # ================================================================ lifecycle

    def start(self) -> None:
        """Load the spec, start the router, announce ourselves in the state folder."""
        self.inputs.load()
        self.routing.start()
        self._write_runtime(running=True)

    def shutdown(self) -> None:
        """Stop every child; the store and the status stay.

        The router goes first: it stops taking requests and finishes those in flight while
        the servers behind it still answer; then the servers stop with nothing to drain.
        """
        self.routing.stop()
        self.servers.stop_all()
        self.state.write_status(self.status)
        self._write_runtime(running=False)

    # ================================================================ one reconcile

    def tick(self) -> None:
        """Take what the user asked, observe, plan, execute, measure, save the status."""
        now = now_utc()
        self.inputs.take_commands()
        if self.options.watch:
            self.inputs.watch_source()
        self.routing.check()
        self.servers.reap()
        local = self.inputs.local
        if local is None:
            return
        command = self.inputs.command
        observed = self.observer.observe(local, self.inputs.applied.generation, command, now)
        decision = step(local.spec, self.status, observed, now)
        self.executor.run(decision.actions, local, self._record_of)
        self.analysis.measure(decision.analysis, local.spec.rollout.analysis, now)
        self._save(decision.status)
        self.inputs.handled(command, self.status)
        self.analysis.refresh_stats()
        self._write_runtime(running=True)

    def _record_of(self, revision: str) -> RevisionStatus | None:
        """A revision's artifacts: from status (a rollback), or a compression just done."""
        for rec in self.status.revisions:
            if rec.name == revision:
                return rec
        return self.compressions.record_of(revision)

    def _save(self, status: ModelDeploymentStatus) -> None:
        if status.endpoint != self.endpoint:
            status = status.model_copy(update={"endpoint": self.endpoint})
        if status != self.status:
            self._announce(self.status, status)
            self.status = status
            self.state.write_status(status)

    # ================================================================ reporting

    def report(self, kind: str, text: str) -> None:
        """An event for the user: the live view, the plain output, `onnxship status`."""
        self.feed(kind, text)

    def _announce(self, old: ModelDeploymentStatus, new: ModelDeploymentStatus) -> None:
        """One line per change a user cares about: phase, step, weights, message."""
        keys = ("phase", "current_step", "canary_weight", "mirror_percent", "stable_revision",
                "canary_revision", "message")  # fmt: skip
        if all(getattr(old, k) == getattr(new, k) for k in keys):
            return
        self.feed("status", f"{new.phase}: {new.message}" if new.message else str(new.phase))

    def snapshot(self) -> Snapshot:
        local = self.inputs.local
        return Snapshot(
            name=self.state.name,
            status=self.status,
            spec=local.spec if local else None,
            endpoint=self.endpoint,
            running=True,
            stats=dict(self.analysis.stats),
            processes=self.servers.view(),
            activity=self.compressions.activity,
            problem=self.feed.problem,
            events=list(self.feed.recent)[-6:],
        )

    def _write_runtime(self, running: bool) -> None:
        """runtime.json: what `onnxship status` and the other commands read of this `up`."""
        router = self.routing.child
        self.state.write_runtime(
            {
                "running": running,
                "pid": os.getpid(),
                "endpoint": self.endpoint,
                "startedAt": self.started_at,
                "updatedAt": time.time(),
                "source": self.inputs.applied.source,
                "generation": self.inputs.applied.generation,
                "routerPid": router.pid if router else 0,
                "processes": self.servers.view(),
                "pids": self.servers.pids() + self.routing.pids(),
                "stats": {rev: st.to_json() for rev, st in self.analysis.stats.items()},
                "cacheHits": list(self.compressions.cache_hits),
                "activity": self.compressions.activity,
                "problem": self.feed.problem,
                "events": list(self.feed.recent),
            }
        )
