"""The way in: what the user's Service selects, and whether the builtin router runs.

The router earns its pod only while it has something to decide: a canary's share, a mirror,
or a choice between environments. At rest, one revision serving one environment, the
Service named after the ModelDeployment selects that revision's model pods directly (they
answer on the same port name, paths and ``onnxship-revision`` header as the router), so a
thousand models at rest run a thousand pods, not two thousand.

Switching is ordered so a request always finds a ready pod: the router is made first and
the Service moves to it only once it is ready, and the canary takes no share before the
Service has selected it for ``settle_seconds``; at the end the Service moves back to the
stable revision's ready pods, and the router goes in a later pass, once the Service has
selected something else for ``drain_seconds``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from onnxship.api import ModelDeploymentSpec, ModelDeploymentStatus

from .observed import ROUTER, FrontSeen, RevisionPods
from .times import format_time, seconds_between

# Model servers and routers close a client's connection at its first answer after
# FrontSeen.connection_max_age (``--max-connection-age``, 10 s by default): kube-proxy picks
# an endpoint per connection, so a client that keeps one open follows the Service's move only
# when it reconnects. A canary's steps start once the Service has selected the router that
# long (``settle_seconds``): every client reaches the router by then. The router goes once
# the Service has left it for ``drain_seconds``: kube-proxy's rules follow the Service within
# a second or two, every connection that sent a request meanwhile has been closed by its
# age, and the router's drain closes the idle rest.
KUBE_PROXY_S = 2.0


def settle_seconds(seen: FrontSeen) -> float:
    return seen.connection_max_age


def drain_seconds(seen: FrontSeen) -> float:
    return seen.connection_max_age + KUBE_PROXY_S


@dataclass(frozen=True)
class FrontPlan:
    """What the Service must select and whether the router must exist."""

    selects: str  # ROUTER or a revision's name
    router: bool
    since: str = ""  # when the Service began to select ``selects``
    recheck_in: float | None = None  # seconds until the router kept for draining may go


def revision_services_wanted(spec: ModelDeploymentSpec, front: FrontPlan | None) -> bool:
    """Whether the revisions get Services of their own: only a router or the Gateway API's
    backends call a revision by one. With the builtin router at rest (or before there is a
    stable revision) the user's Service selects the pods, and a Service more would cost the
    API server a ClusterIP and the controller-manager an EndpointSlice kept in step."""
    if spec.rollout.traffic.router != "builtin":
        return True
    return front is not None and front.router


def router_wanted(spec: ModelDeploymentSpec, status: ModelDeploymentStatus) -> bool:
    """The router has work: environments to choose between, or a canary with steps left.

    A canary with none left (a rollback, a promote, ``steps: []``) goes to 100% at once
    when it is ready, which the Service does alone.
    """
    if len(spec.serving.effective_environments()) > 1:
        return True
    if not status.stable_revision or not status.canary_revision:
        return False
    return (
        status.current_step < len(spec.rollout.steps)
        or status.canary_weight > 0
        or status.mirror_percent > 0
    )


def plan_front(
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    seen: FrontSeen,
    revisions: Mapping[str, RevisionPods],
    now: datetime,
) -> FrontPlan | None:
    """The Service's target and the router's existence for ``status``; None before there is
    a stable revision to serve (nothing to select yet)."""
    if not status.stable_revision:
        return None
    selects, router = _target(spec, status, seen, revisions)
    since = seen.since if selects == seen.selects and seen.since else format_time(now)
    if selects != ROUTER and seen.selects == ROUTER and seen.router:
        # Leaving it in this pass: the router goes in a pass after the drain.
        return FrontPlan(selects, router=True, since=since, recheck_in=drain_seconds(seen))
    if router or not seen.router:
        return FrontPlan(selects, router, since)
    left = drain_seconds(seen) - seconds_between(seen.since, now) if seen.since else 0.0
    if left > 0:
        return FrontPlan(selects, router=True, since=since, recheck_in=left)
    return FrontPlan(selects, router=False, since=since)


def _target(
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    seen: FrontSeen,
    revisions: Mapping[str, RevisionPods],
) -> tuple[str, bool]:
    stable = status.stable_revision
    wanted = router_wanted(spec, status)
    if wanted and seen.routing:
        return ROUTER, True
    pods = revisions.get(stable)
    stable_serves = pods is not None and pods.can_serve
    if seen.selects == ROUTER:
        # Leaving the router (its work is done): only for pods that answer.
        return (stable if stable_serves else ROUTER), True
    # Direct: the stable's pods, or the revision selected now until the stable's answer (a
    # rollback in progress), unless that one is gone.
    keep = seen.selects if seen.selects in revisions and not stable_serves else ""
    return keep or stable, wanted


def selected_revision(seen: FrontSeen | None) -> str:
    """The revision the Service sends requests to directly; "" when none or the router."""
    if seen is None or seen.selects == ROUTER:
        return ""
    return seen.selects
