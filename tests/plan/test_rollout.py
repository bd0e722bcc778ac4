"""The rollout engine, scenario by scenario, through a simulated world (tests/plan/sim.py)."""

from __future__ import annotations

import pytest

from onnxship.api import (
    CompressionSummary,
    ConditionType,
    EnvironmentStatus,
    Phase,
    Reason,
    RevisionStatus,
)
from onnxship.plan.actions import DeleteRevision, EnsureRevision, SetTraffic
from onnxship.plan.analysis import Result
from onnxship.plan.conditions import find_condition
from onnxship.plan.observed import ArtifactState, CommandKind, DesiredRevision
from onnxship.plan.rollout import step
from onnxship.plan.traffic import TrafficSplit

from .sim import World, desired, make_spec

STEPS = [
    {"setWeight": 10},
    {"pause": {"duration": "1m"}},
    {"setWeight": 50},
    {"pause": {}},
]


def stable_world(steps: list[dict] | None = None, **analysis: object) -> World:
    """r1 stable and serving everything."""
    w = World(make_spec(STEPS if steps is None else steps, **analysis), desired("app-r1"))
    w.settle()
    assert w.status.stable_revision == "app-r1" and w.status.phase == Phase.ready
    return w


def cond(w: World, t: ConditionType) -> tuple[str, str]:
    c = find_condition(w.status.conditions, t)
    assert c is not None
    return c.status, c.reason


def test_first_revision_waits_for_its_artifacts_then_its_pods() -> None:
    w = World(make_spec(STEPS), desired("app-r1", ArtifactState.pending))
    d = w.settle()
    assert w.status.phase == Phase.compressing and not d.actions
    assert cond(w, ConditionType.compressed) == ("False", Reason.compression_started)

    w.desired = desired("app-r1")
    d = w.reconcile()
    assert d.of_type(EnsureRevision) == [
        EnsureRevision("app-r1", {"default": 2}, w.status.revisions[0])
    ]
    assert w.status.phase == Phase.progressing and w.traffic is None  # no traffic yet
    w.settle()  # pods ready: the first revision skips the steps
    assert w.status.phase == Phase.ready
    assert w.status.stable_revision == "app-r1" and w.status.canary_revision == ""
    assert w.weights() == {"app-r1": 100}
    assert cond(w, ConditionType.available) == ("True", Reason.stable_serving)
    assert cond(w, ConditionType.degraded) == ("False", Reason.healthy)
    assert w.status.observed_generation == 1


def test_canary_walks_the_steps_and_waits_for_promote() -> None:
    w = stable_world()
    w.desired = desired("app-r2")
    w.settle()
    assert w.status.canary_revision == "app-r2"
    assert w.weights() == {"app-r1": 90, "app-r2": 10}
    assert w.status.current_step == 1 and w.status.phase == Phase.progressing

    w.advance(30)
    assert w.weights() == {"app-r1": 90, "app-r2": 10}  # the 1m pause is not over
    w.advance(31)
    assert w.weights() == {"app-r1": 50, "app-r2": 50}
    assert w.status.phase == Phase.paused and w.status.paused
    assert w.reasons().count(Reason.paused) == 1

    w.advance(3600)  # an open pause waits for a person
    assert w.status.phase == Phase.paused

    w.send(CommandKind.promote)
    assert w.status.stable_revision == "app-r2" and w.status.canary_revision == ""
    assert w.weights() == {"app-r2": 100}
    assert set(w.revisions) == {"app-r2"}  # old stable's workload removed
    assert [r.name for r in w.status.revisions] == ["app-r1", "app-r2"]  # its record kept
    assert w.status.phase == Phase.ready
    assert Reason.rollout_completed in w.reasons()


def test_traffic_moves_before_workloads_go() -> None:
    w = stable_world(steps=[{"setWeight": 50}])
    w.desired = desired("app-r2")
    w.settle()
    kinds = [type(a) for d in w.decisions for a in d.actions if not hasattr(a, "reason")]
    last_traffic = max(i for i, k in enumerate(kinds) if k is SetTraffic)
    assert kinds.index(DeleteRevision) > last_traffic


def test_a_revision_a_router_still_routes_to_is_kept_until_it_has_the_new_table() -> None:
    """Found by e2e (process node): the old stable was deleted in the pass that wrote the
    new table, while the router, which reads it from a mounted ConfigMap, still sent it
    requests (502: its Service was gone)."""
    w = stable_world(steps=[{"setWeight": 50}, {"pause": {"duration": "1m"}}])
    w.desired = desired("app-r2")
    w.settle()
    assert w.weights() == {"app-r1": 50, "app-r2": 50}
    w.routed = frozenset({"app-r1", "app-r2"})  # the router has not loaded 100% yet
    w.advance(60)
    assert w.weights() == {"app-r2": 100}
    assert "app-r1" in w.revisions, "deleted while a router still routes to it"
    w.routed = frozenset({"app-r2"})
    w.reconcile()
    assert "app-r1" not in w.revisions


def test_an_aborted_canary_keeps_its_pods_until_the_router_stops_sending_it_requests() -> None:
    w = stable_world(failureLimit=0)
    w.desired = desired("app-r2")
    w.settle()
    w.routed = frozenset({"app-r1", "app-r2"})
    w.advance(30)
    w.measure(Result.failed, requests=100, errors=20)
    assert w.status.aborted and w.weights() == {"app-r1": 100}
    assert sum(w.revisions["app-r2"].replicas.values()) > 0
    w.routed = frozenset({"app-r1"})
    w.reconcile()
    assert sum(w.revisions["app-r2"].replicas.values()) == 0


def test_failed_analysis_beyond_the_limit_rolls_back() -> None:
    w = stable_world(failureLimit=1)
    w.desired = desired("app-r2")
    w.settle()
    w.advance(30)
    w.measure(Result.failed, requests=100, errors=20)
    assert not w.status.aborted and w.status.analysis and w.status.analysis.failures == 1
    w.advance(30)
    w.measure(Result.failed, requests=100, errors=20)
    assert w.status.aborted and w.status.phase == Phase.degraded
    assert w.weights() == {"app-r1": 100}
    assert w.revisions["app-r2"].replicas == {"default": 0}
    assert w.revisions["app-r1"].replicas == {"default": 2}
    assert cond(w, ConditionType.degraded) == ("True", Reason.analysis_failed)
    assert w.status.stable_revision == "app-r1"
    # the same verdict observed again is not counted twice
    failures = w.status.analysis.failures if w.status.analysis else 0
    w.advance(30)
    assert w.status.analysis and w.status.analysis.failures == failures


def test_abort_then_retry_then_promote() -> None:
    w = stable_world()
    w.desired = desired("app-r2")
    w.settle()
    w.send(CommandKind.abort)
    assert w.status.phase == Phase.degraded and w.weights() == {"app-r1": 100}
    assert cond(w, ConditionType.degraded) == ("True", Reason.aborted)
    w.advance(600)  # stays aborted
    assert w.status.phase == Phase.degraded
    w.send(CommandKind.retry)
    assert not w.status.aborted and w.weights() == {"app-r1": 90, "app-r2": 10}
    w.send(CommandKind.promote)
    assert w.status.stable_revision == "app-r2" and w.status.phase == Phase.ready


def test_a_newer_revision_mid_canary_starts_from_step_zero() -> None:
    w = stable_world()
    w.desired = desired("app-r2")
    w.settle()
    w.advance(61)
    assert w.weights()["app-r2"] == 50
    w.desired = desired("app-r3", ArtifactState.pending)
    w.settle()
    assert w.status.canary_revision == "" and w.weights() == {"app-r1": 100}
    assert "app-r2" not in w.revisions and w.status.phase == Phase.compressing
    assert Reason.canary_superseded in w.reasons()
    w.desired = desired("app-r3")
    w.settle()
    assert w.status.canary_revision == "app-r3" and w.weights()["app-r3"] == 10
    assert w.status.current_step == 1


def test_rollback_to_an_earlier_revision_reuses_its_artifact() -> None:
    w = stable_world(steps=[{"setWeight": 50}])
    w.desired = desired("app-r2")
    w.settle()
    assert w.status.stable_revision == "app-r2"
    w.send(CommandKind.rollback, "app-r1")
    assert w.status.stable_revision == "app-r1" and w.weights() == {"app-r1": 100}
    assert w.status.pinned_revision == "app-r1" and w.status.phase == Phase.ready
    assert cond(w, ConditionType.compressed) == ("True", Reason.artifact_reused)
    assert set(w.revisions) == {"app-r1"}
    # the pin holds while the spec is unchanged, and yields to a new spec
    w.advance(60)
    assert w.status.stable_revision == "app-r1"
    w.desired = desired("app-r3")
    w.settle()
    assert w.status.pinned_revision == "" and w.status.stable_revision == "app-r3"


def test_rollback_to_an_unknown_revision_is_rejected() -> None:
    w = stable_world()
    w.send(CommandKind.rollback, "app-nope")
    assert w.status.stable_revision == "app-r1"
    assert w.events[-1].reason == Reason.command_rejected and w.events[-1].type == "Warning"


def test_revision_history_limit_keeps_stable_and_canary() -> None:
    w = World(make_spec([]).model_copy(update={"revision_history_limit": 2}), desired("app-r0"))
    w.settle()
    for i in range(1, 7):
        w.desired = desired(f"app-r{i}")
        w.settle()
    assert w.status.stable_revision == "app-r6"
    assert [r.name for r in w.status.revisions] == ["app-r4", "app-r5", "app-r6"]


def test_progress_deadline_aborts_a_canary_that_never_gets_ready() -> None:
    w = stable_world()
    w.never_ready.add("app-r2")
    w.desired = desired("app-r2")
    d = w.settle()
    assert d.requeue_after == pytest.approx(600)
    w.advance(599)
    assert w.status.phase == Phase.progressing and w.weights() == {"app-r1": 100}
    w.advance(2)
    assert w.status.phase == Phase.degraded
    assert cond(w, ConditionType.degraded) == ("True", Reason.progress_deadline_exceeded)


def test_failed_compression_degrades_while_stable_serves() -> None:
    w = stable_world()
    w.desired = desired(
        "app-r2",
        ArtifactState.failed,
        failure_reason=Reason.accuracy_gate_failed,
        failure_message="cosine 0.91 below 0.99",
    )
    w.settle()
    assert w.status.phase == Phase.degraded and w.weights() == {"app-r1": 100}
    assert cond(w, ConditionType.compressed) == ("False", Reason.accuracy_gate_failed)
    assert cond(w, ConditionType.available) == ("True", Reason.stable_serving)
    assert w.reasons().count(Reason.accuracy_gate_failed) == 1  # events on transitions only


MIRROR = [{"mirror": {"percent": 20, "duration": "1m"}}, {"setWeight": 100}]


def test_mirror_step_needs_a_passing_check() -> None:
    w = stable_world(MIRROR, minOutputAgreement={"metric": "cosine", "min": 0.98})
    w.desired = desired("app-r2")
    d = w.settle()
    assert w.traffic == TrafficSplit((("app-r1", 100), ("app-r2", 0)), "app-r2", 20)
    assert d.analysis is not None and d.analysis.mirroring and d.analysis.revision == "app-r2"
    w.advance(30)
    w.measure(Result.passed, requests=50, comparisons=50, cosine=0.999)
    assert w.status.current_step == 0  # the duration is not over
    w.advance(31)
    assert w.status.stable_revision == "app-r2" and w.weights() == {"app-r2": 100}


def test_inconclusive_mirror_step_pauses_after_a_grace_interval() -> None:
    w = stable_world(MIRROR)
    w.desired = desired("app-r2")
    w.settle()
    w.advance(30)
    w.measure(Result.inconclusive, requests=3)
    w.advance(31)
    assert w.status.phase == Phase.progressing  # one interval of grace
    w.advance(30)
    assert w.status.phase == Phase.paused and w.status.mirror_percent == 20
    assert Reason.analysis_inconclusive in w.reasons()
    w.send(CommandKind.resume)
    assert w.status.stable_revision == "app-r2"


def test_failing_mirror_step_rolls_back_before_users_see_the_canary() -> None:
    w = stable_world(MIRROR, failureLimit=0)
    w.desired = desired("app-r2")
    w.settle()
    w.advance(30)
    w.measure(Result.failed, requests=50, comparisons=50, cosine=0.5)
    assert w.status.aborted and w.weights() == {"app-r1": 100}
    assert w.traffic is not None and w.traffic.mirror_percent == 0


def test_analysis_step_waits_for_a_pass() -> None:
    w = stable_world([{"setWeight": 20}, {"analysis": {"duration": "1m"}}, {"setWeight": 60}])
    w.desired = desired("app-r2")
    w.settle()
    w.advance(61)
    assert w.status.current_step == 1  # no verdict yet: waits one interval
    w.measure(Result.passed, requests=100)
    assert w.status.stable_revision == "app-r2"


def test_spec_returning_to_stable_abandons_the_canary() -> None:
    w = stable_world()
    w.desired = desired("app-r2")
    w.settle()
    w.desired = desired("app-r1")
    w.settle()
    assert w.status.canary_revision == "" and w.status.phase == Phase.ready
    assert set(w.revisions) == {"app-r1"} and w.weights() == {"app-r1": 100}


def test_replica_changes_apply_in_place() -> None:
    w = stable_world()
    w.spec = w.spec.model_copy(
        update={"serving": w.spec.serving.model_copy(update={"replicas": 5})}
    )
    w.settle()
    assert w.revisions["app-r1"].replicas == {"default": 5}
    assert w.status.stable_revision == "app-r1"


def test_unchanged_inputs_give_no_actions_and_an_equal_status() -> None:
    w = stable_world()
    w.desired = desired("app-r2")
    w.settle()
    obs = w.observed()
    first = step(w.spec, w.status, obs, w.now)
    second = step(w.spec, first.status, obs, w.now)
    assert first.actions == second.actions == ()
    assert first.status == second.status == w.status


def test_lost_router_state_is_set_again() -> None:
    w = stable_world()
    w.traffic = None  # e.g. the router restarted with an empty table
    d = w.reconcile()
    assert d.of_type(SetTraffic) == [SetTraffic(TrafficSplit((("app-r1", 100),)))]


def test_status_round_trips_through_the_wire() -> None:
    """All state is in status: a status read back from the API server resumes the same."""
    from onnxship.api import ModelDeploymentStatus

    w = stable_world()
    w.desired = desired("app-r2")
    w.settle()
    w.status = ModelDeploymentStatus.model_validate(w.status.to_wire())
    d = step(w.spec, w.status, w.observed(), w.now)
    assert d.actions == () and d.status == w.status


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        (CommandKind.promote, "there is no canary"),
        (CommandKind.abort, "there is no canary"),
        (CommandKind.resume, "there is no canary"),
        (CommandKind.retry, "there is no canary"),
    ],
)
def test_commands_without_a_canary_are_rejected(kind: CommandKind, why: str) -> None:
    w = stable_world()
    w.send(kind)
    assert w.events[-1].reason == Reason.command_rejected and why in w.events[-1].message
    assert w.status.phase == Phase.ready and w.status.last_command == "c1"


def test_a_command_is_handled_once() -> None:
    w = stable_world()
    w.desired = desired("app-r2")
    w.settle()
    w.send(CommandKind.abort)
    w.send(CommandKind.retry)
    assert not w.status.aborted
    w.advance(10)  # the retry command is still observed: it must not restart again
    assert w.reasons().count(Reason.new_revision) == 3  # r1, r2, retry of r2


def test_every_environment_gets_its_replicas() -> None:
    spec = make_spec([{"setWeight": 50}]).model_copy(
        update={
            "serving": make_spec().serving.model_validate(
                {"replicas": 2, "environments": [{"name": "cpu"}, {"name": "gpu", "replicas": 1}]}
            )
        }
    )
    w = World(spec, desired("app-r1"))
    w.settle()
    assert w.revisions["app-r1"].replicas == {"cpu": 2, "gpu": 1}


def test_requeue_after_points_at_the_end_of_a_pause() -> None:
    w = stable_world()
    w.desired = desired("app-r2")
    w.settle()
    d = step(w.spec, w.status, w.observed(), w.now)
    assert d.requeue_after == pytest.approx(30)  # the analysis interval comes before 60s
    w.advance(45)
    d = step(w.spec, w.status, w.observed(), w.now)
    assert d.requeue_after == pytest.approx(15)


def llm_revision(name: str, variant: str, top1: float) -> DesiredRevision:
    summary = CompressionSummary(kind="causal-lm", variant=variant, accuracy=top1, top1=top1)
    record = RevisionStatus(
        name=name, environments=[EnvironmentStatus(name="default", compression=summary)]
    )
    return DesiredRevision(name=name, artifacts={"default": ArtifactState.ready}, record=record)


def test_status_shows_the_newest_variant_and_asks_for_timed_streams_at_a_weight() -> None:
    steps = [{"mirror": {"percent": 50, "duration": "1m"}}, {"setWeight": 20}, {"pause": {}}]
    w = World(make_spec(steps), llm_revision("llm-r1", "int8-rtn-b32-emb8", 0.97))
    w.settle()
    assert (w.status.variant, w.status.agreement) == ("int8-rtn-b32-emb8", 0.97)
    w.desired = llm_revision("llm-r2", "int4-hqq-b32-emb8", 0.91)
    w.settle()
    assert (w.status.variant, w.status.agreement) == ("int4-hqq-b32-emb8", 0.91)  # the canary's
    request = step(w.spec, w.status, w.observed(), w.now).analysis
    assert request is not None and request.mirroring and not request.serving
    w.advance(30)
    w.measure(Result.passed, requests=40, token_comparisons=40, token_agreement=0.95)
    assert w.status.analysis is not None and w.status.analysis.output_agreement == 0.95
    w.advance(60)
    assert w.status.canary_weight == 20
    request = step(w.spec, w.status, w.observed(), w.now).analysis
    assert request is not None and request.serving and not request.mirroring
    w.send(CommandKind.abort)
    assert w.status.aborted and w.status.variant == "int8-rtn-b32-emb8"  # stable's again


def test_weight_steps_without_pauses_each_reach_the_router() -> None:
    """Argo Rollouts writes every setWeight step; walking them in one pass in memory would send
    the canary from 0 straight to 100% with nothing measured in between (issue 21's scale
    run found only the 100% written)."""
    w = stable_world(steps=[{"setWeight": 10}, {"setWeight": 40}, {"setWeight": 70}])
    w.desired = desired("app-r2")
    w.settle()
    written = [
        dict(a.split.weights).get("app-r2", 0)
        for d in w.decisions
        for a in d.actions
        if isinstance(a, SetTraffic)
    ]
    assert [x for x in written if x] == [10, 40, 70, 100]
    assert w.status.stable_revision == "app-r2" and w.weights() == {"app-r2": 100}
