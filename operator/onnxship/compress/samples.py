"""Inputs for calibration and the accuracy gate: the user's .npz, or made up from the signature.

The .npz is untrusted: it is read with ``allow_pickle=False`` and checked against the
model's inputs. How rows are found in it (CONTRACTS.md §1), per input:

- an input with a symbolic dimension: its first symbolic axis is its batch axis, and the
  array holds N rows along it (a state [2, B, 128] -> an array [2, N, 128]);
- an input whose batch is fixed (axis 0 fixed at 1, or every dimension fixed): an array with
  one more dimension holds N samples stacked on a new axis 0; an array of the model's rank
  whose axis 0 is not the fixed 1 holds N rows along axis 0; either way the model is run one
  sample at a time;
- an array of exactly the model's shape (a 0-d sample rate for a 0-d input) is passed as
  given with every batch.

A fixed 1 on axis 0 means a batch fixed at 1 even when a later axis is symbolic (a captcha
reader [1, 1, 64, W]): W is a length, not a batch.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from .errors import SourceError
from .validate import TensorSpec

SYNTHETIC_ROWS = 16
SYNTHETIC_DIM = 16  # for symbolic dimensions other than the batch
MAX_ROWS = 256  # more samples cost time, not confidence
SAMPLE_RATE = 16_000

How = Literal["axis", "stacked", "whole"]


@dataclass(frozen=True)
class Layout:
    """Where an input's rows are: along ``axis`` (``axis``), one per leading index of a stacked
    array (``stacked``), or nowhere: the array goes with every call as given (``whole``)."""

    how: How
    axis: int = 0


@dataclass(frozen=True)
class Samples:
    arrays: dict[str, np.ndarray]
    layouts: dict[str, Layout]
    synthetic: bool
    note: str = ""
    # the model takes one sample per call (a batch fixed at 1, or fully fixed shapes)
    one_per_call: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        for name, layout in self.layouts.items():
            if layout.how != "whole":
                return int(self.arrays[name].shape[layout.axis])
        return 1

    @property
    def digest(self) -> str:
        """SHA-256 over names, dtypes, shapes and bytes: other samples, another cache key."""
        h = hashlib.sha256()
        for name in sorted(self.arrays):
            a = np.ascontiguousarray(self.arrays[name])
            h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        """Every row in one feed (only meaningful when the model takes a batch per call)."""
        return self.batches(max(self.rows, 1))[0]

    def mask_name(self) -> str | None:
        """The [batch, seq] attention mask among the inputs, if there is exactly one."""
        names = [
            k
            for k, v in self.arrays.items()
            if "mask" in k.lower()
            and v.dtype.kind in "iub"
            and self.layouts[k] == Layout("axis", 0)
            and v.ndim == 2
        ]
        return names[0] if len(names) == 1 else None

    def attention_mask(self) -> np.ndarray | None:
        name = self.mask_name()
        return None if name is None else self.arrays[name]

    def head(self, rows: int) -> Samples:
        """The first ``rows`` rows (calibration and a first screening on fewer rows)."""
        if rows >= self.rows:
            return self
        return replace(self, arrays=_cut(self.arrays, self.layouts, rows))

    def batches(self, size: int) -> list[dict[str, np.ndarray]]:
        """Feeds of ``size`` rows each (one row each when the model takes one per call)."""
        size = 1 if self.one_per_call else max(size, 1)
        out = []
        for start in range(0, self.rows, size):
            stop = min(start + size, self.rows)
            feed = {}
            for name, layout in self.layouts.items():
                a = self.arrays[name]
                if layout.how == "stacked":
                    part = a[start]
                elif layout.how == "axis":
                    part = np.take(a, range(start, stop), axis=layout.axis)
                else:
                    part = a
                feed[name] = np.array(part, order="C")  # ascontiguousarray makes 0-d 1-d
            out.append(feed)
        return out


def _cut(arrays: dict[str, np.ndarray], layouts: dict[str, Layout], rows: int) -> dict:
    out = {}
    for name, a in arrays.items():
        layout = layouts[name]
        if layout.how == "whole":
            out[name] = a
        else:
            index = [slice(None)] * a.ndim
            index[layout.axis] = slice(0, rows)
            out[name] = a[tuple(index)]
    return out


def batch_axis(spec: TensorSpec) -> int | None:
    """The model's batch axis of an input: its first symbolic axis, unless axis 0 is fixed
    at 1 (a batch fixed at 1: later symbolic axes are lengths)."""
    dims = spec.shape
    if dims and dims[0] == 1:
        return None
    for i, d in enumerate(dims):
        if not (isinstance(d, int) and d > 0):
            return i
    return None


def _fits(shape: tuple[int, ...], dims: tuple[int | str | None, ...]) -> bool:
    return len(shape) == len(dims) and all(
        not (isinstance(d, int) and d > 0) or d == s for s, d in zip(shape, dims, strict=True)
    )


def _model_shape(spec: TensorSpec) -> str:
    return "[" + ", ".join(str(d) if d not in (None, "") else "?" for d in spec.shape) + "]"


def _layout(name: str, array: np.ndarray, spec: TensorSpec, where: str) -> Layout:
    dims = spec.shape
    axis = batch_axis(spec)
    wrong = (
        f"{where}: {name} is shaped {list(array.shape)}, the model's input is "
        f"{_model_shape(spec)}"
    )
    if axis is not None:
        if array.ndim != len(dims):
            raise SourceError(
                f"{wrong}: give an array of the model's rank with the rows on axis {axis} "
                "(its first symbolic axis)"
            )
        row_dims = (*dims[:axis], None, *dims[axis + 1 :])
        if not _fits(array.shape, row_dims):
            raise SourceError(f"{wrong}: a fixed dimension differs")
        return Layout("axis", axis)
    if array.ndim == len(dims) + 1:
        if not _fits(array.shape[1:], dims):
            raise SourceError(f"{wrong}: each of the {array.shape[0]} stacked samples must fit it")
        return Layout("stacked")
    if array.ndim == len(dims) and _fits(array.shape, dims):
        return Layout("whole")
    if array.ndim == len(dims) and dims and dims[0] == 1 and _fits(array.shape[1:], dims[1:]):
        return Layout("axis", 0)  # rows along a fixed 1: fed one at a time
    raise SourceError(
        f"{wrong}: give an array of exactly that shape, N samples of it stacked on a new "
        "axis 0, or (for a batch fixed at 1) N rows on axis 0"
    )


def load_samples(path: Path, inputs: list[TensorSpec], max_rows: int = MAX_ROWS) -> Samples:
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
    feeds: dict[str, np.ndarray] = {}
    layouts: dict[str, Layout] = {}
    for spec in inputs:
        array = arrays[spec.name]
        layouts[spec.name] = _layout(spec.name, array, spec, str(path))
        try:
            feeds[spec.name] = array.astype(spec.numpy_dtype, copy=False)
        except (TypeError, ValueError) as exc:
            raise SourceError(
                f"{path}: {spec.name} holds {array.dtype} values, which do not convert to the "
                f"model's {spec.numpy_dtype} ({exc})"
            ) from None
    counts = {
        name: feeds[name].shape[lay.axis] for name, lay in layouts.items() if lay.how != "whole"
    }
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{n} {c}" for n, c in counts.items())
        raise SourceError(f"{path}: sample inputs disagree on the number of rows ({detail})")
    rows = next(iter(counts.values()), 1)
    if rows == 0:
        raise SourceError(f"{path}: the sample inputs hold no rows")
    one_per_call = any(
        lay.how == "stacked" or (lay.how == "axis" and batch_axis(spec) is None)
        for spec in inputs
        for lay in [layouts[spec.name]]
    )
    notes = []
    if rows > max_rows:
        feeds = _cut(feeds, layouts, max_rows)
        notes.append(
            f"samples: the gate read the first {max_rows:,} of {rows:,} rows "
            "(more rows cost time, not confidence)"
        )
    if one_per_call and rows > 1:
        notes.append("samples: the model's batch is fixed, so it ran one sample at a time")
    feeds = {k: np.ascontiguousarray(v) if v.ndim else v for k, v in feeds.items()}
    return Samples(
        feeds, layouts, synthetic=False, note="; ".join(notes), one_per_call=one_per_call
    )


_RATE = re.compile(r"(^sr$|sample_?rate|sampling_?rate|^rate$)", re.IGNORECASE)


def _made_up(
    spec: TensorSpec, shape: list[int], rng: np.random.Generator, where: str
) -> np.ndarray:
    """Values a model of this kind reads: token ids, masks, bytes, a sample rate, noise."""
    dtype = spec.numpy_dtype
    lowered = spec.name.lower()
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind in "iu":
        if _RATE.search(spec.name):
            return np.full(shape, SAMPLE_RATE, dtype)
        if "mask" in lowered:
            return np.ones(shape, dtype)
        if "type" in lowered or "segment" in lowered:
            return np.zeros(shape, dtype)
        if "byte" in lowered or dtype.itemsize == 1:
            return rng.integers(0, 256, shape).astype(dtype)
        # Small ids stay inside any embedding table worth quantizing.
        return rng.integers(0, 100, shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    raise SourceError(
        f"input {spec.name} has type {dtype}, which onnxship cannot make up; "
        f"pass sample inputs ({where})"
    )


def synthesize(
    inputs: list[TensorSpec],
    rows: int = SYNTHETIC_ROWS,
    seed: int = 0,
    dim: int = SYNTHETIC_DIM,
    where: str = "spec.model.sampleInputs or --samples",
) -> Samples:
    """Inputs made up from the signature: fixed dimensions kept, ``rows`` rows on each
    input's batch axis (stacked samples when the model's batch is fixed), ``dim`` for other
    symbolic dimensions, and values in readable ranges for their dtype and name."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    layouts: dict[str, Layout] = {}
    axes = {spec.name: batch_axis(spec) for spec in inputs}
    any_batch = any(a is not None for a in axes.values())
    for spec in inputs:
        axis = axes[spec.name]
        shape = [d if isinstance(d, int) and d > 0 else dim for d in spec.shape]
        if axis is not None:
            shape[axis] = rows
            layouts[spec.name] = Layout("axis", axis)
        elif not any_batch and spec.shape:
            shape = [rows, *shape]
            layouts[spec.name] = Layout("stacked")
        else:
            layouts[spec.name] = Layout("whole")  # a scalar or fixed input beside batched ones
        feeds[spec.name] = _made_up(spec, shape, rng, where)
    note = (
        f"no sample inputs given: the accuracy check ran on {rows} made-up inputs (fixed "
        f"dimensions kept, other dimensions {dim}) from the model's signature; "
        "pass real samples for a meaningful gate"
    )
    return Samples(
        feeds,
        layouts,
        synthetic=True,
        note=note,
        one_per_call=not any_batch,
    )


def warmup_feed(samples: Samples, max_rows: int = 4, max_bytes: int = 1_000_000) -> dict | None:
    """One batch of real rows as fed to the model, for serve's warm-up (CONTRACTS.md §2)."""
    if samples.synthetic:
        return None
    for rows in (max_rows, 1):
        feed = samples.batches(rows)[0]
        if sum(a.nbytes for a in feed.values()) <= max_bytes:
            return feed
    return None
