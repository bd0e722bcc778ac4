"""The event loop onnxship's servers run on: uvloop's where it is installed, else asyncio's.

uvloop saves 10-14 us of CPU per request in `onnxship serve` and about 12% per proxied request
in `onnxship route` (bench/results/raw/serve_frontend.json, router_scaling.json); it is not
built for Windows, where asyncio's loop serves the same way. ``ONNXSHIP_EVENT_LOOP=asyncio``
chooses asyncio's loop anyway: uvloop resolves host names in libuv, past any Python-level
resolver hook (the e2e process node's stand-in for cluster DNS is one).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    if os.environ.get("ONNXSHIP_EVENT_LOOP", "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the fastest loop available."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
