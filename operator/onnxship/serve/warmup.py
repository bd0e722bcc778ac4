"""Warm-up: one inference before the server says ready, so the first user pays nothing.

It prefers real rows: ``warmup.npz`` beside the model (compress keeps one batch of the user's
samples in the artifact, CONTRACTS.md §2). Without it, inputs are made up from the signature:
fixed dimensions as the model says, dynamic ones at 1, then (if that fails) the non-batch ones
at 64, zeros of the input's dtype. A model can refuse any made-up input (an If on a sample rate,
a reflect Pad that needs more frames than we guessed) and still serve its users, so a failed
warm-up is a warning naming the inputs, never a reason to die: readiness is about being able to
answer, and only a real request can tell whether the model can.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .datatypes import OIP_TO_NUMPY
from .signature import ModelSignature, TensorSpec

log = logging.getLogger(__name__)

WARMUP_FILE = "warmup.npz"
# The file is untrusted like every file of a model folder: compress writes at most 1 MB, so
# anything far larger is not ours, and its members are bounded before numpy inflates them.
MAX_FILE_BYTES = 16 << 20
MAX_INFLATED_BYTES = 64 << 20
MADE_UP_DIMS = (1, 64)  # non-batch dynamic dimensions, tried in this order

Run = Callable[[dict[str, np.ndarray]], object]


@dataclass(frozen=True)
class WarmupResult:
    source: str  # "warmup.npz", "made-up", "none"
    ok: bool
    detail: str = ""


def describe_feeds(feeds: Mapping[str, np.ndarray]) -> str:
    return ", ".join(f"{name!r} {a.dtype}{list(a.shape)}" for name, a in feeds.items())


def load_warmup_rows(path: Path, signature: ModelSignature) -> dict[str, np.ndarray]:
    """The batch in ``path``, checked against the model's inputs; ValueError says what's off."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{size} bytes, more than the {MAX_FILE_BYTES} a warm-up batch may have")
    try:
        with zipfile.ZipFile(path) as archive:
            inflated = sum(i.file_size for i in archive.infolist())
        if inflated > MAX_INFLATED_BYTES:
            raise ValueError(f"inflates to {inflated} bytes (limit {MAX_INFLATED_BYTES})")
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"not a readable .npz ({exc})") from None
    feeds: dict[str, np.ndarray] = {}
    for spec in signature.inputs.values():
        if spec.name not in arrays:
            raise ValueError(f"it has no array for input {spec.name!r}")
        feeds[spec.name] = _fit(spec, arrays[spec.name])
    return feeds


def _fit(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    where = f"input {spec.name!r}: {array.dtype}{list(array.shape)}"
    if spec.datatype == "BYTES":
        if array.dtype.kind not in "US":
            raise ValueError(f"{where}, the model takes strings")
        return array.astype(object)
    expected = np.dtype(OIP_TO_NUMPY[spec.datatype])
    if array.dtype != expected:
        raise ValueError(f"{where}, the model takes {expected}")
    if array.ndim != len(spec.shape) or any(
        d >= 0 and d != a for d, a in zip(spec.shape, array.shape, strict=True)
    ):
        raise ValueError(f"{where}, the model takes {spec.describe()}")
    return array


def made_up_feeds(signature: ModelSignature, other_dims: int) -> dict[str, np.ndarray]:
    """Zeros honouring fixed dimensions and dtypes: the first dynamic axis (the batch) at 1,
    the other dynamic axes at ``other_dims``."""
    feeds: dict[str, np.ndarray] = {}
    for spec in signature.inputs.values():
        shape: list[int] = []
        for d in spec.shape:
            if d >= 0:
                shape.append(d)
            else:
                shape.append(1 if -1 not in spec.shape[: len(shape)] else other_dims)
        if spec.datatype == "BYTES":
            feeds[spec.name] = np.full(shape, "", dtype=object)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=OIP_TO_NUMPY[spec.datatype])
    return feeds


def warm_up(run: Run, signature: ModelSignature, folder: Path) -> WarmupResult:
    """One inference on the best inputs there are; never raises for the model's sake."""
    rows = folder / WARMUP_FILE
    if rows.is_file():
        try:
            feeds = load_warmup_rows(rows, signature)
        except ValueError as exc:
            log.warning(
                f"{rows} does not fit the model: {exc}; warming up with made-up inputs",
                extra={"file": str(rows)},
            )
        else:
            try:
                run(feeds)
            except Exception as exc:
                log.warning(
                    f"warm-up with {rows} ({describe_feeds(feeds)}) failed: {_message(exc)}; "
                    "trying made-up inputs",
                    extra={"file": str(rows)},
                )
            else:
                return WarmupResult(WARMUP_FILE, True, describe_feeds(feeds))
    if not signature.inputs:
        return WarmupResult("none", True)
    tried: list[str] = []
    errors: list[str] = []
    dynamic_beyond_batch = any(
        s.shape.count(-1) > 1 for s in signature.inputs.values()
    )
    for other in MADE_UP_DIMS if dynamic_beyond_batch else MADE_UP_DIMS[:1]:
        feeds = made_up_feeds(signature, other)
        tried.append(describe_feeds(feeds))
        try:
            run(feeds)
        except Exception as exc:
            errors.append(_message(exc))
            continue
        return WarmupResult("made-up", True, tried[-1])
    names = ", ".join(repr(n) for n in signature.inputs)
    log.warning(
        f"warm-up with made-up inputs failed for input(s) {names} (tried {' / '.join(tried)}): "
        f"{errors[-1]}; ready anyway: the model may need real values (a sample rate, enough "
        f"frames), which only requests carry. Keep a {WARMUP_FILE} beside the model to warm up "
        "with real rows",
        extra={"inputs": names},
    )
    return WarmupResult("made-up", False, errors[-1])


def _message(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 600 else text[:600] + "..."
