"""The condition setter: one place that knows when a condition has changed.

Like argo-rollouts' ``utils/conditions``: ``lastTransitionTime`` moves only when the status
(True/False/Unknown) flips; a new reason or message updates the condition in place. The
caller learns whether anything changed, so Events fire on transitions only.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from onnxship.api import Condition, ConditionType

from .times import format_time

Status = Literal["True", "False", "Unknown"]


def find_condition(conditions: Sequence[Condition], type_: ConditionType | str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def set_condition(
    conditions: Sequence[Condition],
    type_: ConditionType | str,
    status: Status,
    reason: str,
    message: str,
    now: datetime,
    generation: int,
) -> tuple[list[Condition], bool]:
    """``conditions`` with ``type_`` set; and whether its status flipped (a transition).

    A condition whose status, reason, message and generation are unchanged is returned as is,
    so an unchanged reconcile produces an equal status.
    """
    old = find_condition(conditions, type_)
    if (
        old is not None
        and old.status == status
        and old.reason == reason
        and old.message == message
        and old.observed_generation == generation
    ):
        return list(conditions), False
    flipped = old is None or old.status != status
    since = format_time(now) if old is None or flipped else old.last_transition_time
    new = Condition(
        type=str(type_),
        status=status,
        reason=str(reason),
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )
    out = [new if c.type == type_ else c for c in conditions]
    if old is None:
        out.append(new)
    return out, flipped


def is_true(conditions: Sequence[Condition], type_: ConditionType | str) -> bool:
    found = find_condition(conditions, type_)
    return found is not None and found.status == "True"
