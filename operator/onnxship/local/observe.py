"""Observe the local world as the plan's ``Observed``.

The desired revision's artifacts (compression jobs), the server processes (the plan's
pods), the split the router was last told, the latest analysis verdict and the oldest
pending command: the controller's ``_observe_*`` steps, with processes instead of objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from onnxship.plan.observed import Command, Observed

from .analysis import RouterAnalysis
from .compression import Compressions
from .events import Feed
from .routing import RouterProcess
from .servers import Servers
from .spec import LocalSpec


@dataclass(frozen=True)
class Observer:
    compressions: Compressions
    servers: Servers
    routing: RouterProcess
    analysis: RouterAnalysis
    feed: Feed

    def observe(
        self, local: LocalSpec, generation: int, command: Command | None, now: datetime
    ) -> Observed:
        desired = self.compressions.observe(local, now)
        if self.compressions.problem:  # the source model went away: it stands until an apply
            self.feed.problem = self.compressions.problem
        return Observed(
            desired=desired,
            generation=generation,
            revisions=self.servers.observe(local),
            traffic=self.routing.split,
            verdict=self.analysis.verdict,
            command=command,
        )
