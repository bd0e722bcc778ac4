"""A canary's or the stable's pods lost mid-canary (killed, evicted, crashing), as users see it."""

from __future__ import annotations

from onnxship.api import ConditionType, Phase, Reason
from onnxship.plan.conditions import find_condition

from .sim import World, desired, make_spec

STEPS = [{"setWeight": 30}, {"pause": {"duration": "1m"}}, {"setWeight": 60}, {"pause": {}}]


def canary_at_30() -> World:
    w = World(make_spec(STEPS), desired("app-r1"))
    w.settle()
    w.desired = desired("app-r2")
    w.settle()
    assert w.weights() == {"app-r1": 70, "app-r2": 30} and w.status.current_step == 1
    return w


def progressing(w: World) -> tuple[str, str, str]:
    c = find_condition(w.status.conditions, ConditionType.progressing)
    assert c is not None
    return c.status, c.reason, c.message


def test_a_canary_with_no_ready_pods_takes_no_traffic_until_they_are_back() -> None:
    w = canary_at_30()
    w.no_ready_pods.add("app-r2")  # its only pod was killed
    w.settle()
    # Users who would reach the canary would get errors: the stable takes its share.
    assert w.weights() == {"app-r1": 100}
    assert w.status.canary_revision == "app-r2" and w.status.canary_weight == 0
    assert w.status.current_step == 1, "the step is kept"
    status, reason, message = progressing(w)
    assert (status, reason) == ("True", Reason.canary_unavailable)
    assert "app-r2 has no ready pods" in message and "app-r1" in message
    assert "no ready pods" in w.status.message
    assert w.reasons().count(Reason.canary_unavailable) == 1, "one event, on the transition"
    assert w.status.phase == Phase.progressing and not w.status.aborted

    w.advance(120)  # the pause would be over: no step is taken without ready pods
    assert w.weights() == {"app-r1": 100} and w.status.current_step == 1

    w.no_ready_pods.discard("app-r2")  # the replacement pod is ready
    w.settle()
    assert w.weights() == {"app-r1": 40, "app-r2": 60}, "back at its step's weight, then on"
    assert progressing(w)[1] != Reason.canary_unavailable
    w.advance(1)
    assert w.status.phase == Phase.paused and w.status.canary_weight == 60


def test_a_canary_with_some_ready_pods_keeps_its_share_and_holds_its_steps() -> None:
    w = canary_at_30()
    w.partly_ready.add("app-r2")  # one of two pods killed; the other serves
    w.advance(120)
    assert w.weights() == {"app-r1": 70, "app-r2": 30}, "no step while not fully ready"
    assert w.status.current_step == 1
    w.partly_ready.discard("app-r2")
    w.settle()
    assert w.weights() == {"app-r1": 40, "app-r2": 60}


def test_the_stables_pods_lost_mid_canary_is_reported_and_users_stay_on_it() -> None:
    w = canary_at_30()
    w.no_ready_pods.add("app-r1")
    w.settle()
    available = find_condition(w.status.conditions, ConditionType.available)
    assert available is not None and (available.status, available.reason) == (
        "False",
        Reason.no_stable_revision,
    )
    assert "app-r1 has no ready pods" in available.message
    # The canary is not promoted by the stable's trouble: it keeps its share only.
    assert w.weights() == {"app-r1": 70, "app-r2": 30}
    w.no_ready_pods.discard("app-r1")
    w.settle()
    available = find_condition(w.status.conditions, ConditionType.available)
    assert available is not None and available.status == "True"
    w.advance(61)
    assert w.weights() == {"app-r1": 40, "app-r2": 60}


def test_a_canary_whose_pods_never_come_back_is_rolled_back_after_the_progress_deadline() -> None:
    w = canary_at_30()
    w.no_ready_pods.add("app-r2")
    d = w.settle()
    assert d.requeue_after == 600, "woken at the deadline (progressDeadline 10m)"
    w.advance(599)
    assert w.status.phase == Phase.progressing and w.weights() == {"app-r1": 100}
    w.advance(2)
    assert w.status.phase == Phase.degraded and w.status.aborted
    degraded = find_condition(w.status.conditions, ConditionType.degraded)
    assert degraded is not None and degraded.reason == Reason.progress_deadline_exceeded
    assert "app-r2 lost its ready pods" in degraded.message and "10m" in degraded.message
    assert w.weights() == {"app-r1": 100} and w.status.stable_revision == "app-r1"


def test_the_deadline_counts_from_the_last_loss_not_the_first() -> None:
    w = canary_at_30()
    w.no_ready_pods.add("app-r2")
    w.settle()
    w.advance(500)
    w.no_ready_pods.discard("app-r2")  # back for a while
    w.settle()
    assert w.status.unavailable_since == ""
    w.no_ready_pods.add("app-r2")  # lost again
    w.settle()
    w.advance(500)
    assert not w.status.aborted, "500 s since this loss: not yet"
    assert w.weights() == {"app-r1": 100}
    w.advance(101)
    assert w.status.phase == Phase.degraded
