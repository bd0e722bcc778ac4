"""Traffic splits become route tables; route tables validate their weights."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from onnxship.api.routes import RouteTable
from onnxship.plan.traffic import TrafficSplit, route_table, split_of

SPLIT = TrafficSplit((("r1", 80), ("r2", 20)), "r2", 10)


def test_route_table_per_environment() -> None:
    urls = {
        ("r1", "cpu"): "http://127.0.0.1:1",
        ("r2", "cpu"): "http://127.0.0.1:2",
        ("r1", "gpu"): "http://127.0.0.1:3",
        ("r2", "gpu"): "http://127.0.0.1:4",
    }
    table = route_table(SPLIT, urls, {"cpu": 70, "gpu": 30})
    assert [(b.revision, b.environment, b.weight) for b in table.backends] == [
        ("r1", "cpu", 80),
        ("r2", "cpu", 20),
        ("r1", "gpu", 80),
        ("r2", "gpu", 20),
    ]
    assert table.mirror is not None and table.mirror.percent == 10
    assert split_of(table) == SPLIT
    assert RouteTable.model_validate(table.to_wire()) == table


def test_missing_url_is_an_error() -> None:
    with pytest.raises(KeyError, match="r2"):
        route_table(SPLIT, {("r1", ""): "http://127.0.0.1:1"})


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ({"backends": [{"revision": "a", "url": "http://x", "weight": 90}]}, "sum to 90"),
        (
            {
                "backends": [{"revision": "a", "url": "http://x", "weight": 100}],
                "mirror": {"revision": "b", "percent": 5},
            },
            "has no backend",
        ),
        ({"backends": [{"revision": "a", "url": "ftp://x", "weight": 100}]}, "url"),
    ],
)
def test_invalid_tables(doc: dict, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        RouteTable.model_validate(doc)
