"""The event loop onnxship's servers run on: uvloop's where it is installed, else asyncio's.

uvloop saves 10-14 us of CPU per request in `onnxship serve` and about 12% per proxied request
in `onnxship route` (bench/results/raw/serve_frontend.json, router_scaling.json); it is not
built for Windows, where asyncio's loop serves the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the fastest loop available."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
