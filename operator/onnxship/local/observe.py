"""Observe the local world as the plan's ``Observed``.

The desired revision's artifacts (compression jobs), the server processes (the plan's
pods), the split the router was last told, the latest analysis verdict and the oldest
pending command: the controller's ``_observe_*`` steps, with processes instead of objects.
"""

from __future__ import annotations

from datetime import datetime

from onnxship.plan.analysis import Verdict
from onnxship.plan.observed import Command, Observed

from .compression import Compressions
from .events import Feed
from .routing import RouterProcess
from .servers import Servers
from .spec import LocalSpec


def observe(
    local: LocalSpec,
    generation: int,
    compressions: Compressions,
    servers: Servers,
    router: RouterProcess,
    verdict: Verdict | None,
    command: Command | None,
    feed: Feed,
    now: datetime,
) -> Observed:
    desired = compressions.observe(local, now)
    if compressions.problem:  # the source model went away: it stands until a new apply
        feed.problem = compressions.problem
    return Observed(
        desired=desired,
        generation=generation,
        revisions=servers.observe(local),
        traffic=router.split,
        verdict=verdict,
        command=command,
    )
