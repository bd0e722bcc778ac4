"""Backend choice without servers: exact splits, mirrors, environments, sticky slots."""

from __future__ import annotations

import collections
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from onnxship.api.routes import RouteTable
from onnxship.router.balance import Ratio, Routing, SmoothWeighted, sticky_slot


@st.composite
def weights(draw: st.DrawFn) -> list[int]:
    n = draw(st.integers(1, 5))
    cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=n - 1, max_size=n - 1)))
    bounds = [0, *cuts, 100]
    return [b - a for a, b in itertools.pairwise(bounds)]


@settings(max_examples=200, deadline=None)
@given(ws=weights(), start=st.integers(0, 99), noise=st.integers(0, 500))
def test_every_window_of_100_follows_the_weights_exactly(
    ws: list[int], start: int, noise: int
) -> None:
    picker = SmoothWeighted(list(enumerate(ws)))
    for _ in range(noise):  # any starting point
        picker.pick()
    picks = [picker.pick() for _ in range(300)]
    # SWRR's period is sum(weights) = 100: every aligned window of 100 is exact
    for offset in (0, 100, 200):
        counts = collections.Counter(picks[offset : offset + 100])
        assert all(counts[i] == w for i, w in enumerate(ws)), (ws, counts)


@given(percent=st.integers(0, 100), noise=st.integers(0, 300))
def test_mirror_ratio_is_exact_per_hundred(percent: int, noise: int) -> None:
    ratio = Ratio(percent)
    for _ in range(noise):
        ratio.take()
    assert sum(ratio.take() for _ in range(100)) == percent


def test_ejected_backends_are_skipped_and_the_rest_keep_their_proportions() -> None:
    picker = SmoothWeighted([("a", 60), ("b", 30), ("c", 10)])
    picks = collections.Counter(picker.pick(lambda x: x != "a") for _ in range(400))
    assert picks == {"b": 300, "c": 100}
    assert picker.pick(lambda x: False) in {"a", "b", "c"}  # all down: still try one


def test_mirror_goes_to_the_canary_in_the_same_environment() -> None:
    table = RouteTable.model_validate(
        {
            "backends": [
                {"revision": "r1", "url": "http://cpu1", "weight": 100, "environment": "cpu"},
                {"revision": "r2", "url": "http://cpu2", "weight": 0, "environment": "cpu"},
                {"revision": "r1", "url": "http://gpu1", "weight": 100, "environment": "gpu"},
                {"revision": "r2", "url": "http://gpu2", "weight": 0, "environment": "gpu"},
            ],
            "mirror": {"revision": "r2", "percent": 25},
        }
    )
    routing = Routing(table)
    mirrored = []
    for _ in range(100):
        b = routing.choose("gpu")
        assert b is not None and b.url == "http://gpu1"
        m = routing.mirror_for(b)
        if m:
            mirrored.append(m.url)
    assert mirrored == ["http://gpu2"] * 25


def test_sticky_slots_are_stable_and_spread() -> None:
    assert sticky_slot("user-1") == sticky_slot("user-1")
    slots = collections.Counter(sticky_slot(f"user-{i}") // 10 for i in range(10_000))
    assert all(800 < n < 1200 for n in slots.values())
