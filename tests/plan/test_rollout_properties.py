"""Properties of the rollout engine over random step lists and event sequences."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxship.api import ModelDeploymentStatus, Phase
from onnxship.plan.actions import DeleteRevision, ScaleRevision
from onnxship.plan.analysis import Result
from onnxship.plan.observed import ArtifactState, CommandKind
from onnxship.plan.rollout import split_for

from .sim import World, desired, make_spec


@st.composite
def step_lists(draw: st.DrawFn) -> list[dict[str, Any]]:
    kinds = draw(st.lists(st.sampled_from(["w", "p", "pt", "m", "a"]), max_size=6))
    weights = sorted(draw(st.lists(st.integers(0, 100), min_size=len(kinds), max_size=len(kinds))))
    out: list[dict[str, Any]] = []
    for kind, weight in zip(kinds, weights, strict=True):
        if kind == "w":
            out.append({"setWeight": weight})
        elif kind == "p":
            out.append({"pause": {}})
        elif kind == "pt":
            out.append({"pause": {"duration": f"{draw(st.integers(1, 120))}s"}})
        elif kind == "m":
            out.append({"mirror": {"percent": draw(st.integers(1, 100)), "duration": "40s"}})
        else:
            out.append({"analysis": {"duration": "40s"}})
    return out


EVENTS = st.one_of(
    st.tuples(st.just("time"), st.integers(1, 400)),
    st.tuples(st.just("revision"), st.integers(1, 5)),
    st.tuples(st.just("pending"), st.integers(1, 5)),
    st.tuples(st.just("failed"), st.integers(1, 5)),
    st.tuples(st.just("verdict"), st.sampled_from(list(Result))),
    st.tuples(st.just("command"), st.sampled_from(list(CommandKind))),
    st.tuples(st.just("rollback"), st.integers(0, 5)),
    st.tuples(st.just("unready"), st.integers(1, 5)),
)


def check_invariants(w: World) -> None:
    split = w.traffic
    if split is not None and split.weights:
        assert all(0 <= wt <= 100 for _, wt in split.weights)
        assert sum(wt for _, wt in split.weights) == 100
    status = w.status
    assert 0 <= status.canary_weight <= 100
    # all state is in status, and status survives the API server
    assert ModelDeploymentStatus.model_validate(status.to_wire()) == status
    for d in w.decisions[-1:]:
        weighted = {r for r, wt in split_for(d.status).weights if wt > 0}
        for a in d.actions:
            if isinstance(a, DeleteRevision):
                assert a.revision not in weighted, a
                assert a.revision != d.status.stable_revision
            if isinstance(a, ScaleRevision) and a.revision == d.status.stable_revision:
                assert sum(a.replicas.values()) > 0
    if status.stable_revision:
        pods = w.revisions.get(status.stable_revision)
        assert pods is not None and sum(pods.replicas.values()) > 0
        # everything routed to has a workload; a canary with no ready pod gets no request
        seen = w.observed().revisions
        for revision, wt in (split.weights if split else ()):
            if wt > 0:
                assert revision in w.revisions
                if revision == status.canary_revision and status.step_started_at:
                    assert seen[revision].can_serve, (revision, split)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=step_lists(), events=st.lists(EVENTS, max_size=25), limit=st.integers(0, 2))
def test_rollout_invariants_hold_and_it_always_comes_to_rest(
    steps: list[dict[str, Any]], events: list[tuple[str, Any]], limit: int
) -> None:
    w = World(make_spec(steps, failureLimit=limit), desired("app-r0"))
    w.settle()
    check_invariants(w)
    for kind, arg in events:
        if kind == "time":
            w.now += timedelta(seconds=arg)
        elif kind == "revision":
            w.desired = desired(f"app-r{arg}")
        elif kind == "pending":
            w.desired = desired(f"app-r{arg}", ArtifactState.pending)
        elif kind == "failed":
            w.desired = desired(f"app-r{arg}", ArtifactState.failed)
        elif kind == "verdict":
            if w.status.canary_revision:
                w.measure(arg, requests=100, comparisons=100, cosine=0.99)
        elif kind == "command":
            w.send(arg, "")
        elif kind == "rollback":
            w.send(CommandKind.rollback, f"app-r{arg}")
        elif kind == "unready":
            w.never_ready.symmetric_difference_update({f"app-r{arg}"})
        w.settle()
        check_invariants(w)

    # Left alone with its artifacts in place and its pods healthy, the machine comes to rest.
    w.never_ready.clear()
    if not w.desired.ready and not w.desired.failed:
        w.desired = desired(w.desired.name)
    for _ in range(len(steps) + 4):
        w.advance(3600)
        check_invariants(w)
    assert w.status.phase in {Phase.ready, Phase.degraded, Phase.paused}, w.status.message
    if w.status.phase == Phase.ready:
        assert w.status.canary_revision == ""
        assert w.weights() == {w.status.stable_revision: 100}
