"""The condition setter keeps lastTransitionTime unless the status flips."""

from __future__ import annotations

from datetime import timedelta

from onnxship.api import ConditionType, Reason
from onnxship.plan.conditions import find_condition, is_true, set_condition

from .sim import T0


def test_transition_time_moves_only_on_flips() -> None:
    conds, flipped = set_condition([], ConditionType.available, "False", "A", "", T0, 1)
    assert flipped and conds[0].last_transition_time == "2026-01-01T12:00:00.000Z"
    later = T0 + timedelta(minutes=1)
    same, flipped = set_condition(conds, ConditionType.available, "False", "A", "", later, 1)
    assert not flipped and same == conds
    reworded, flipped = set_condition(conds, ConditionType.available, "False", "B", "x", later, 1)
    assert not flipped and reworded[0].reason == "B"
    assert reworded[0].last_transition_time == conds[0].last_transition_time
    up, flipped = set_condition(
        reworded, ConditionType.available, "True", Reason.healthy, "", later, 2
    )
    assert flipped and up[0].last_transition_time == "2026-01-01T12:01:00.000Z"
    assert up[0].observed_generation == 2 and is_true(up, ConditionType.available)


def test_other_conditions_are_kept_in_order() -> None:
    conds, _ = set_condition([], ConditionType.compressed, "True", "X", "", T0, 1)
    conds, _ = set_condition(conds, ConditionType.available, "True", "Y", "", T0, 1)
    conds, _ = set_condition(conds, ConditionType.compressed, "False", "Z", "", T0, 1)
    assert [c.type for c in conds] == ["Compressed", "Available"]
    found = find_condition(conds, ConditionType.compressed)
    assert found is not None and found.reason == "Z"
