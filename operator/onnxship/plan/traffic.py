"""Traffic splits: what the rollout wants the router to do, and the route table it becomes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from onnxship.api.routes import Backend, MirrorRoute, RouteTable


@dataclass(frozen=True)
class TrafficSplit:
    """Weights per revision (stable first, summing to 100 when any) and an optional mirror."""

    weights: tuple[tuple[str, int], ...] = ()
    mirror_revision: str = ""
    mirror_percent: int = 0

    def weight_of(self, revision: str) -> int:
        return sum(w for r, w in self.weights if r == revision)

    def revisions(self) -> list[str]:
        return [r for r, _ in self.weights]


def route_table(
    split: TrafficSplit,
    urls: Mapping[tuple[str, str], str],
    environment_weights: Mapping[str, int] | None = None,
) -> RouteTable:
    """The route table for ``split``; ``urls`` maps (revision, environment) to a base URL.

    Use ``""`` as the environment when revisions have a single, unnamed backend. Every
    revision of the split needs a URL in every environment that any revision has.
    """
    envs = sorted({env for _, env in urls})
    backends = []
    for env in envs:
        for revision, weight in split.weights:
            url = urls.get((revision, env))
            if url is None:
                raise KeyError(f"no URL for revision {revision!r} in environment {env!r}")
            backends.append(Backend(revision=revision, url=url, weight=weight, environment=env))
    mirror = (
        MirrorRoute(revision=split.mirror_revision, percent=split.mirror_percent)
        if split.mirror_revision and split.mirror_percent
        else None
    )
    return RouteTable(
        backends=backends, mirror=mirror, environments=dict(environment_weights or {})
    )


def split_of(table: RouteTable) -> TrafficSplit:
    """The split a route table carries (what the router was last told)."""
    mirror = table.mirror
    return TrafficSplit(
        weights=tuple(table.weights().items()),
        mirror_revision=mirror.revision if mirror and mirror.percent else "",
        mirror_percent=mirror.percent if mirror else 0,
    )
