"""Choosing a backend: exact weighted splits, environments, pins, sticky sessions, mirroring.

No I/O here: the proxy asks ``Routing.choose`` for a backend and ``Routing.mirror_for`` for
a mirror target. Splits are deterministic (nginx's smooth weighted round robin), so any 100
consecutive requests of an environment follow the weights exactly, not just on average.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from onnxship.api.routes import Backend, RouteTable

T = TypeVar("T")

ENVIRONMENT_HEADER = "onnxship-environment"
REVISION_HEADER = "onnxship-revision"


class SmoothWeighted(Generic[T]):
    """Smooth weighted round robin: over ``sum(weights)`` picks each item is chosen exactly
    ``weight`` times, and picks of one item are spread out, not bunched."""

    def __init__(self, items: Sequence[tuple[T, int]]) -> None:
        self.items = [(item, weight) for item, weight in items if weight > 0]
        self.current = [0] * len(self.items)

    def pick(self, eligible: Callable[[T], bool] | None = None) -> T | None:
        chosen = -1
        total = 0
        for i, (item, weight) in enumerate(self.items):
            if eligible is not None and not eligible(item):
                continue
            self.current[i] += weight
            total += weight
            if chosen < 0 or self.current[i] > self.current[chosen]:
                chosen = i
        if chosen < 0:
            # every item is ineligible (e.g. all ejected): better to try one than to refuse
            return self.pick() if eligible is not None and self.items else None
        self.current[chosen] -= total
        return self.items[chosen][0]


class Ratio:
    """Says yes to exactly ``percent`` of calls out of every 100, evenly spread."""

    def __init__(self, percent: int) -> None:
        self.percent = max(0, min(100, percent))
        self.acc = 0

    def take(self) -> bool:
        self.acc += self.percent
        if self.acc >= 100:
            self.acc -= 100
            return True
        return False


def sticky_slot(key: str) -> int:
    """A stable slot in 0..99 for a session key (same key, same slot, in every process)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % 100


class Routing:
    """A route table compiled for picking. Replaced whole when the table changes."""

    def __init__(self, table: RouteTable) -> None:
        self.table = table
        envs = table.environment_names()
        self.groups: dict[str, SmoothWeighted[Backend]] = {}
        self.backends: dict[str, list[Backend]] = {}
        for env in envs:
            members = [b for b in table.backends if b.environment == env]
            self.backends[env] = members
            self.groups[env] = SmoothWeighted([(b, b.weight) for b in members])
        if table.environments:
            shares = [(e, table.environments.get(e, 0)) for e in envs]
        else:
            shares = [(e, 1) for e in envs]
        self.env_picker: SmoothWeighted[str] = SmoothWeighted(shares)
        mirror = table.mirror
        self.mirror_revision = mirror.revision if mirror and mirror.percent else ""
        self.mirror_ratio = Ratio(mirror.percent if mirror else 0)

    @property
    def empty(self) -> bool:
        return not self.table.backends

    def environment_for(self, requested: str) -> str | None:
        if requested:
            return requested if requested in self.groups else None
        if len(self.groups) == 1:
            return next(iter(self.groups))
        return self.env_picker.pick()

    def choose(
        self,
        environment: str = "",
        revision: str = "",
        sticky_key: str = "",
        healthy: Callable[[Backend], bool] | None = None,
    ) -> Backend | None:
        """The backend for one request; None when nothing can serve it."""
        env = self.environment_for(environment)
        if env is None:
            return None
        members = self.backends[env]
        if revision:
            pinned = [b for b in members if b.revision == revision]
            return pinned[0] if pinned else None
        if sticky_key:
            slot = sticky_slot(sticky_key)
            upto = 0
            for b in members:
                upto += b.weight
                if slot < upto:
                    return b
            return None
        return self.groups[env].pick(healthy)

    def mirror_for(self, primary: Backend) -> Backend | None:
        """The canary backend a copy of this request goes to, for ``percent`` of requests."""
        if not self.mirror_revision or primary.revision == self.mirror_revision:
            return None
        if not self.mirror_ratio.take():
            return None
        for b in self.backends.get(primary.environment, []):
            if b.revision == self.mirror_revision:
                return b
        return None
