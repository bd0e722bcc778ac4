"""`onnxship up` follows its FILE, and obeys promote / abort / rollback from another terminal."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Up, version_of, write_spec

MANUAL = {"steps": [{"setWeight": 50}, {"pause": {}}], "analysis": {"interval": "1s"}}


@pytest.mark.slow
def test_file_edits_promote_abort_rollback(
    tmp_path: Path, demo_models: dict[str, Path], up_factory: Callable[[], Up]
) -> None:
    versions = {}
    for v in ("v1", "v2", "v3"):
        (tmp_path / v).mkdir()
        versions[v] = write_spec(tmp_path / v, demo_models, v, rollout=MANUAL)
    deploy = tmp_path / "deploy.yaml"
    shutil.copy(versions["v1"], deploy)
    up = up_factory().start(str(deploy))
    status = up.wait_for("v1 stable", lambda s: s.phase == "Ready")
    v1 = status.stable_revision

    # Editing FILE starts a canary; the open pause waits for a person.
    shutil.copy(versions["v2"], deploy)
    status = up.wait_for("v2 paused at 50%", lambda s: s.paused and s.canary_weight == 50)
    assert version_of(status, status.canary_revision) == "v2"
    promoted = up.cli("promote")
    assert promoted.exit_code == 0, promoted.output
    status = up.wait_for("v2 stable", lambda s: version_of(s, s.stable_revision) == "v2")
    v2 = status.stable_revision

    shutil.copy(versions["v3"], deploy)
    up.wait_for("v3 paused", lambda s: s.paused and version_of(s, s.canary_revision) == "v3")
    aborted = up.cli("abort")
    assert aborted.exit_code == 0, aborted.output
    status = up.wait_for("v3 aborted", lambda s: s.aborted and s.phase == "Degraded")
    assert status.stable_revision == v2 and status.canary_weight == 0

    # Back to v1 from its stored artifact: no compression, straight to 100%.
    rolled = up.cli("rollback", "--to", v1)
    assert rolled.exit_code == 0, rolled.output
    status = up.wait_for(
        "v1 stable again", lambda s: s.stable_revision == v1 and not s.canary_revision
    )
    assert "rolling back to" in up.output()
    assert up.interrupt() == 0
