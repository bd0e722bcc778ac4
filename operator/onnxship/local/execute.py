"""Execute the plan's actions with processes: the controller's ``_execute`` for one machine.

EnsureRevision and ScaleRevision start or stop `onnxship serve` processes, DeleteRevision
stops a revision's, SetTraffic rewrites the router's table, EmitEvent tells the user.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from onnxship.api import RevisionStatus
from onnxship.plan.actions import (
    Action,
    DeleteRevision,
    EmitEvent,
    EnsureRevision,
    ScaleRevision,
    SetTraffic,
)
from onnxship.plan.traffic import TrafficSplit, route_table
from onnxship.plan.workloads import environment_weights

from .events import Say
from .options import UpOptions
from .routing import RouterProcess
from .servers import Servers
from .spec import LocalSpec

# revision -> its record (artifacts per environment), from status or a finished compression
Records = Callable[[str], RevisionStatus | None]


class Executor:
    """Applies a Decision's actions to the servers and the router."""

    def __init__(
        self, servers: Servers, router: RouterProcess, options: UpOptions, say: Say
    ) -> None:
        self.servers = servers
        self.router = router
        self.options = options
        self.say = say

    def run(self, actions: Iterable[Action], local: LocalSpec, records: Records) -> None:
        """Apply ``actions`` in order."""
        for action in actions:
            if isinstance(action, EnsureRevision):
                self._ensure(local, action.revision, dict(action.replicas), action.record, records)
            elif isinstance(action, ScaleRevision):
                self._ensure(local, action.revision, dict(action.replicas), None, records)
            elif isinstance(action, DeleteRevision):
                self.servers.delete(action.revision)
            elif isinstance(action, SetTraffic):
                self._set_traffic(local, action.split)
            elif isinstance(action, EmitEvent):
                self.say("warning" if action.type == "Warning" else "info", action.message)

    def _ensure(
        self,
        local: LocalSpec,
        revision: str,
        replicas: dict[str, int],
        record: RevisionStatus | None,
        records: Records,
    ) -> None:
        if not self.servers.ensure(local, revision, replicas, record or records(revision)):
            self.say("warning", f"{revision}: no artifact record, cannot start it")

    def _set_traffic(self, local: LocalSpec, split: TrafficSplit) -> None:
        """Write the split into the router, once the servers it sends traffic to can answer.

        Like a Service that lists only ready endpoints: a revision that takes a share (or
        copies) must have been ready once; until then the plan's request waits, and the
        plan asks again on the next tick because the observed traffic has not changed.
        """
        envs = local.spec.serving.effective_environments()
        named = len(envs) > 1  # one environment: backends carry none, as in the cluster
        env_weights = environment_weights(local.spec) if named else {}
        urls = {}
        for revision, weight in split.weights:
            served = self.servers.served.get(revision)
            if served is None:
                continue
            takes_traffic = weight > 0 or revision == split.mirror_revision
            if takes_traffic and not all(c.ever_ready for c in served.children.values()):
                return
            for env_name, child in served.children.items():
                urls[(revision, env_name if named else "")] = (
                    f"http://{self.options.host}:{child.ports['http']}"
                )
        try:
            table = route_table(split, urls, env_weights)
        except (KeyError, ValueError) as exc:
            self.say("warning", f"cannot route {split.weights}: {exc}")
            return
        self.router.route(table, split)
        parts = ", ".join(f"{r} {w}%" for r, w in split.weights)
        if split.mirror_percent:
            parts += f", mirror {split.mirror_percent}% to {split.mirror_revision}"
        self.say("info", f"traffic: {parts}")
