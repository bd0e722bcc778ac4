"""Inputs for calibration and the accuracy gate: the user's .npz, or made up from the signature.

The .npz is untrusted: it is read with ``allow_pickle=False`` and checked against the
model's inputs (names, ranks, a shared first dimension).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import SourceError
from .validate import TensorSpec

SYNTHETIC_ROWS = 16
SYNTHETIC_DIM = 16  # for symbolic dimensions other than the batch
MAX_ROWS = 256  # more samples cost time, not confidence


@dataclass(frozen=True)
class Samples:
    feeds: dict[str, np.ndarray]
    synthetic: bool
    note: str = ""

    @property
    def rows(self) -> int:
        return int(next(iter(self.feeds.values())).shape[0])

    def attention_mask(self) -> np.ndarray | None:
        """The [batch, seq] attention mask among the inputs, if there is exactly one."""
        masks = [
            v
            for k, v in self.feeds.items()
            if "mask" in k.lower() and v.ndim == 2 and v.dtype.kind in "iub"
        ]
        return masks[0] if len(masks) == 1 else None

    def batches(self, size: int) -> list[dict[str, np.ndarray]]:
        return [
            {k: v[i : i + size] for k, v in self.feeds.items()} for i in range(0, self.rows, size)
        ]


def load_samples(path: Path, inputs: list[TensorSpec]) -> Samples:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise SourceError(f"{path}: not a readable .npz of sample inputs ({exc})") from None
    missing = [i.name for i in inputs if i.name not in arrays]
    if missing:
        raise SourceError(
            f"{path}: sample inputs lack {', '.join(missing)} (the model's inputs are "
            f"{', '.join(i.name for i in inputs)}; the file has {', '.join(arrays) or 'nothing'})"
        )
    feeds = {}
    for spec in inputs:
        array = arrays[spec.name]
        if array.ndim != len(spec.shape) and spec.shape:
            raise SourceError(
                f"{path}: {spec.name} has {array.ndim} dimensions, "
                f"the model expects {len(spec.shape)}"
            )
        feeds[spec.name] = np.ascontiguousarray(
            array[:MAX_ROWS].astype(spec.numpy_dtype, copy=False)
        )
    rows = {v.shape[0] if v.ndim else 0 for v in feeds.values()}
    if len(rows) != 1 or 0 in rows:
        raise SourceError(f"{path}: sample inputs must share a non-empty first (batch) dimension")
    return Samples(feeds, synthetic=False)


def synthesize(inputs: list[TensorSpec], rows: int = SYNTHETIC_ROWS, seed: int = 0) -> Samples:
    """Inputs made up from the signature; token-like integer inputs get plausible values."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in inputs:
        shape = [rows] + [
            d if isinstance(d, int) and d > 0 else SYNTHETIC_DIM for d in spec.shape[1:]
        ]
        dtype = spec.numpy_dtype
        lowered = spec.name.lower()
        if dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            if "mask" in lowered:
                feeds[spec.name] = np.ones(shape, dtype)
            elif "type" in lowered or "segment" in lowered:
                feeds[spec.name] = np.zeros(shape, dtype)
            else:
                # Small ids stay inside any embedding table worth quantizing.
                feeds[spec.name] = rng.integers(0, 100, shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            raise SourceError(
                f"input {spec.name} has type {dtype}, which onnxship cannot make up; "
                "pass sample inputs (spec.model.sampleInputs or --samples)"
            )
    note = (
        f"no sample inputs given: the accuracy check ran on {rows} random inputs made from the "
        "model's signature; pass real samples for a meaningful gate"
    )
    return Samples(feeds, synthetic=True, note=note)
