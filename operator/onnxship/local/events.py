"""What `onnxship up` tells its user: one line per event, and the one problem that stands.

The live view, the plain output (through ``on_event``) and `onnxship status` (through the
runtime file) all show these same lines; the cluster's counterpart is a Kubernetes Event.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("onnxship.local")

# (kind, text): kind is "info", "warning" or "status"
Say = Callable[[str, str], None]


class Feed:
    """Call it with (kind, text) to tell the user something; ``problem`` is what stands."""

    def __init__(self, on_event: Say | None = None, keep: int = 8) -> None:
        self.on_event = on_event or (lambda kind, text: None)
        self.recent: deque[str] = deque(maxlen=keep)
        # A spec file that does not parse, a model file gone, a tick that failed: shown until
        # something clears it.
        self.problem = ""

    def __call__(self, kind: str, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.recent.append(f"{stamp} {text}")
        (log.warning if kind == "warning" else log.info)(text)
        self.on_event(kind, text)
