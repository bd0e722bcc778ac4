"""The scale bench's flow at CI size (issue 21): 50 ModelDeployments on the real API server.

The flow is ``bench/scale_bench.py``'s (e2e/harness/scale.py), run once for the module on a
control plane of its own whose API server writes an audit log of ServiceAccounts' requests
(the operator's, counted by its user); KWOK plays the node. 50 ModelDeployments with pinned
digests whose artifacts are in moto's S3 (no Job) turn Ready; a model change on 10 of them
walks a canary each (setWeight 25, 50, 75, no pauses); the operator restarted at rest; all
deleted. Each test below asserts one promise a user would notice. The operator's resync is
15 s here (60 s by default) so that a rest window of 30 s holds two passes of every object.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.harness.control_plane import (
    BIN,
    CONTROLLERS,
    kwok_available,
    missing_binaries,
    start_control_plane,
)
from e2e.harness.kubelet import NODE, FakeKubelet
from e2e.harness.scale import (
    CONTROLLER_MANAGER_ARGS,
    STEPS,
    AuditTail,
    Options,
    ScaleRun,
    apiserver_args,
    kwok_node,
    prepare_store,
)

COUNT, CANARIES = 50, 10
OPTIONS = Options(
    count=COUNT,
    canaries=CANARIES,
    rest_seconds=30.0,
    resync_seconds=15.0,
    ready_timeout=600.0,
    step_timeout=300.0,
    cases=("onnxship",),
)


@pytest.fixture(scope="module")
def scale(s3: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The measured run (what was measured up to a failure, and the failure in ``error``)."""
    missing = missing_binaries()
    if missing or not kwok_available():
        pytest.skip(
            f"control-plane binaries or kwok not built ({', '.join(missing) or 'kwok'} missing "
            f"in {BIN}, or E2E_NODES=harness): run e2e/build.sh or make e2e"
        )
    scratch: Path = tmp_path_factory.mktemp("scale")
    cp = start_control_plane(CONTROLLERS, apiserver_args(scratch), CONTROLLER_MANAGER_ARGS)
    audit = AuditTail(scratch / "audit.log")
    kubelet: FakeKubelet | None = None
    try:
        store = prepare_store(s3, scratch / "models", bucket="onnxship-scale-e2e")
        kubelet = kwok_node(cp)
        run = ScaleRun(cp, audit, store, NODE, OPTIONS, say=print)
        # A failure is recorded in the result's "error"; each test says what it lacks.
        with contextlib.suppress(AssertionError):
            run.run()
        yield run.results["onnxship"]
    finally:
        audit.stop()
        if kubelet is not None:
            kubelet.stop()
        cp.stop()


def reached(result: dict[str, Any], part: str) -> dict[str, Any]:
    if part not in result:
        pytest.fail(
            f"the run stopped before '{part}': {result.get('error', 'no error recorded')}",
            pytrace=False,
        )
    return dict(result[part])


def test_every_model_deployment_turns_ready_without_a_job(scale: dict[str, Any]) -> None:
    ready = reached(scale, "ready")
    assert "create jobs" not in ready["requests_per_object_by_verb"], ready
    print(f"{COUNT} Ready in {scale['seconds_to_all_ready']} s")


def test_canaries_all_finish(scale: dict[str, Any]) -> None:
    canary = reached(scale, "canary")
    assert canary["canaries"] == CANARIES
    # reached() above: the harness waited until every canary's new revision was stable,
    # phase Ready at generation 2, and every route table at 100% for it.
    print(f"{CANARIES} canaries done in {canary['seconds_to_all_done']} s")


def test_canaries_write_every_steps_traffic(scale: dict[str, Any]) -> None:
    """Each setWeight step's table reaches the router before the next one replaces it
    (found by this run: before 69bf5e0 steps without pauses went to 100% in one write)."""
    canary = reached(scale, "canary")
    assert canary["canaries_with_every_step_written"] == CANARIES, (
        f"steps {list(STEPS)}: canary weights written, by sequence: "
        f"{canary['canary_weight_sequences']}"
    )


def test_restart_at_rest_touches_no_unchanged_object(scale: dict[str, Any]) -> None:
    restart = reached(scale, "restart")
    assert restart["writes"] == 0, restart["writes_examples"]
    assert restart["objects_changed"] == 0, restart["objects_changed_examples"]
    assert restart["seconds_back_to_rest"] <= 120, restart


def test_at_rest_at_most_three_requests_per_object_per_pass(scale: dict[str, Any]) -> None:
    rest = reached(scale, "rest")
    assert rest["operator_writes"] == 0, rest["operator_requests_by_verb"]
    assert rest["reconcile_passes"] >= COUNT, rest  # every object had a pass in the window
    assert rest["requests_per_object_per_pass"] <= 3, rest["operator_requests_by_verb"]
    assert rest["operator_requests_per_second"] <= 50, rest


def test_deleting_all_removes_them_and_their_children(scale: dict[str, Any]) -> None:
    deleted = reached(scale, "delete")
    assert "error" not in scale, scale["error"]
    print(f"{COUNT} deleted in {deleted['seconds_to_all_gone']} s")
