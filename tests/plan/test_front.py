"""The way in (plan/front.py): the Service selects the serving revision's pods directly while
one revision serves one environment, and the router runs only while a canary (or a choice of
environments) needs it; switching never leaves requests without a ready pod."""

from __future__ import annotations

from onnxship.api import Phase, Reason, parse_spec
from onnxship.plan.actions import DeleteRevision, SetTraffic
from onnxship.plan.front import drain_seconds, settle_seconds
from onnxship.plan.observed import ROUTER, ArtifactState, CommandKind, DesiredRevision, FrontSeen
from onnxship.plan.rollout import step

from .sim import World, desired, make_spec
from .test_rollout import STEPS

ROUTER_SETTLE_S = settle_seconds(FrontSeen())
ROUTER_DRAIN_S = drain_seconds(FrontSeen())


def direct_world(steps: list[dict] | None = None) -> World:
    """r1 stable, its pods selected by the Service, no router."""
    w = World(make_spec(STEPS if steps is None else steps), desired("app-r1"), front=FrontSeen())
    w.settle()
    assert w.status.phase == Phase.ready
    return w


def test_one_revision_is_served_without_a_router() -> None:
    w = direct_world()
    assert w.front == FrontSeen("app-r1", since=w.front.since) and w.front.since
    assert w.reached() == {"app-r1": 100}
    assert w.traffic is None, "no route table is written without a router"
    assert all(not d.of_type(SetTraffic) for d in w.decisions)


def test_a_canary_waits_for_its_router_then_walks_its_steps_through_it() -> None:
    w = direct_world()
    w.router_never_ready = True
    w.desired = desired("app-r2")
    w.settle()
    assert w.front is not None and w.front.router and not w.front.router_ready
    assert w.reached() == {"app-r1": 100}, "the Service stays on r1 until the router is ready"
    assert w.status.canary_weight == 0 and w.status.step_started_at == ""
    assert "waiting for its router" in w.status.message
    w.advance(120)  # no step's time runs while the router is not ready
    assert w.status.step_started_at == "" and w.status.current_step == 0

    w.router_never_ready = False
    w.advance(1)
    assert w.front.selects == ROUTER
    # Clients holding a connection to r1's pods reconnect within the servers' connection
    # age: until then the canary takes no share.
    assert w.reached() == {"app-r1": 100} and w.status.step_started_at == ""
    assert w.decisions[-1].requeue_after is not None
    assert w.decisions[-1].requeue_after <= ROUTER_SETTLE_S
    w.advance(ROUTER_SETTLE_S)
    assert w.reached() == {"app-r1": 90, "app-r2": 10}
    w.advance(61)
    assert w.reached() == {"app-r1": 50, "app-r2": 50} and w.status.paused

    w.send(CommandKind.promote)
    assert w.status.stable_revision == "app-r2" and w.status.canary_revision == ""
    assert w.reached() == {"app-r2": 100}
    assert w.front.selects == "app-r2", "done: the Service selects r2's pods again"
    assert w.front.router, "the router drains before it goes"
    w.advance(ROUTER_DRAIN_S)
    assert not w.front.router and w.traffic is None
    assert set(w.revisions) == {"app-r2"}


def test_the_router_is_removed_only_after_the_service_left_it() -> None:
    w = direct_world()
    w.desired = desired("app-r2")
    w.settle()
    w.send(CommandKind.promote)
    # The pass that moves the Service asks for the pass that removes the router: nothing
    # else may come to wake the operator.
    switch = next(d for d in w.decisions if d.front and d.front.selects == "app-r2")
    assert switch.front is not None and switch.front.router
    assert switch.requeue_after == ROUTER_DRAIN_S
    w.advance(ROUTER_DRAIN_S / 2)
    assert w.front.router
    w.advance(ROUTER_DRAIN_S / 2)
    assert not w.front.router


def test_a_router_that_never_gets_ready_aborts_the_canary_at_the_progress_deadline() -> None:
    w = direct_world()
    w.router_never_ready = True
    w.desired = desired("app-r2")
    w.settle()
    w.advance(601)  # the default progressDeadline, 10m
    assert w.status.phase == Phase.degraded and w.status.aborted
    assert w.reasons()[-1] == Reason.progress_deadline_exceeded
    assert "router" in w.status.message
    assert w.reached() == {"app-r1": 100}


def test_a_rollback_switches_the_service_once_the_old_revision_is_ready() -> None:
    w = direct_world()
    w.desired = desired("app-r2")
    w.settle()
    w.send(CommandKind.promote)
    w.advance(ROUTER_DRAIN_S)
    assert w.reached() == {"app-r2": 100} and not w.front.router

    w.never_ready.add("app-r1")
    w.send(CommandKind.rollback, "app-r1")
    assert not w.front.router, "a rollback has no steps: no router"
    assert w.reached() == {"app-r2": 100}, "r2 serves until r1's pods are ready"
    assert "app-r2" in w.revisions
    w.never_ready.clear()
    w.settle()
    assert w.status.stable_revision == "app-r1" and w.reached() == {"app-r1": 100}
    w.settle()
    assert set(w.revisions) == {"app-r1"}


def test_the_revision_the_service_selects_is_never_deleted() -> None:
    w = direct_world()
    w.desired = desired("app-r2")
    w.settle()
    w.send(CommandKind.promote)
    # The pass that moves the Service from the router to r2's pods: had it selected r1
    # directly, r1 would be kept. Here: a status that says r2 while the Service selects r1.
    assert w.front is not None
    w.front = FrontSeen("app-r1", since=w.front.since)
    w.revisions["app-r1"] = w.revisions["app-r2"]
    d = step(w.spec, w.status, w.observed(), w.now)
    assert DeleteRevision("app-r1") not in d.actions
    assert d.front is not None and d.front.selects == "app-r2"


def test_two_environments_keep_their_router_at_rest() -> None:
    """The router chooses between environments (weights, the environment header)."""
    spec = parse_spec(
        {
            "model": {"uri": "s3://models/m/model.onnx"},
            "serving": {"replicas": 1, "environments": [{"name": "cpu"}, {"name": "gpu"}]},
        }
    )
    ready = ArtifactState.ready
    wanted = DesiredRevision(
        "app-r1", {"cpu": ready, "gpu": ready}, desired("app-r1").record
    )
    w = World(spec, wanted, front=FrontSeen())
    w.settle()
    assert w.front is not None and w.front.selects == ROUTER and w.front.router
    assert w.reached() == {"app-r1": 100}
