"""How long-running store and compression work reports progress, without knowing who listens."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Called with the task's name, the units done so far (cumulative) and the total if known.

    Byte tasks count bytes; step tasks report ``(name, 0, 1)`` when they start and
    ``(name, 1, 1)`` when they end. A listener may be called from worker threads.
    """

    def __call__(self, task: str, done: int, total: int | None) -> None: ...


def no_progress(task: str, done: int, total: int | None) -> None:
    """The listener used when nobody listens."""
