"""One loaded model: its session, its signature, and a run that speaks protocol errors."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from .config import ServeConfig
from .errors import InferenceFailed, InvalidInput
from .session import create_session
from .signature import ModelSignature
from .warmup import WarmupResult, warm_up

log = logging.getLogger(__name__)


class LoadedModel:
    def __init__(self, session: ort.InferenceSession, path: Path, load_seconds: float) -> None:
        self.session = session
        self.path = path
        self.signature = ModelSignature.from_session(session)
        self.load_seconds = load_seconds
        self.output_order = list(self.signature.outputs)
        self.warmup: WarmupResult | None = None

    @classmethod
    def load(cls, path: Path, config: ServeConfig) -> LoadedModel:
        """Session created and warmed up: after this returns the first request is fast."""
        start = time.perf_counter()
        session = create_session(path, config)
        model = cls(session, path, 0.0)
        if config.warmup:
            # A failed warm-up is logged inside, never raised: see warmup.py.
            model.warmup = warm_up(
                lambda feeds: model.session.run(None, feeds), model.signature, path.parent
            )
        model.load_seconds = time.perf_counter() - start
        return model

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """Blocking; called on the inference thread. ORT releases the GIL while it runs."""
        try:
            values = self.session.run(outputs, feeds)
        except ort_state.InvalidArgument as exc:
            # The request passed our checks but not the model's own (a dimension the graph
            # ties to another, a value out of range): still the caller's to fix.
            raise InvalidInput(f"the model rejected the inputs: {_ort_message(exc)}") from None
        except Exception as exc:
            # A model that fails at run time after passing warm-up is a 500: the canary
            # analysis must see a broken model as errors, not as its users' mistakes.
            message = _ort_message(exc)
            log.warning("inference failed", extra={"error": message})
            raise InferenceFailed(f"inference failed: {message}") from None
        return dict(zip(outputs, values, strict=True))


def _ort_message(exc: Exception) -> str:
    # ORT prefixes messages with "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : "; keep the rest.
    text = str(exc)
    return text.rsplit(" : ", 1)[-1] if text.startswith("[ONNXRuntimeError]") else text
