"""Model calls from a samples file, read as CONTRACTS.md §1 says (for the test and the bench).

Kept apart from onnxship's own reader on purpose: the corpus checks the product against an
independent reading of the format, not against itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort


def model_calls(samples: Path, session: ort.InferenceSession) -> Iterator[dict[str, np.ndarray]]:
    """One feed dict per sample row: the row along each input's first symbolic axis, one of
    N stacked fixed-shape samples, or the array as given (a 0-d sample rate) with every row."""
    with np.load(samples, allow_pickle=False) as npz:
        arrays = {arg.name: npz[arg.name] for arg in session.get_inputs()}
    pick = {}
    rows = set()
    for arg in session.get_inputs():
        array = arrays[arg.name]
        dims = list(arg.shape or [])
        symbolic = [i for i, d in enumerate(dims) if not (isinstance(d, int) and d >= 0)]
        if array.ndim == len(dims) + 1:  # N model-shaped samples stacked on a new axis
            pick[arg.name] = ("stacked", 0)
            rows.add(array.shape[0])
        elif symbolic and dims[0] != 1:
            pick[arg.name] = ("axis", symbolic[0])
            rows.add(array.shape[symbolic[0]])
        elif array.ndim and (symbolic or array.shape != tuple(dims)):
            # rows along a fixed axis 0; a fixed 1 there is a batch fixed at 1 even with a
            # symbolic axis later (a captcha reader [1, 1, 64, W]: W is a width, not a batch)
            pick[arg.name] = ("axis", 0)
            rows.add(array.shape[0])
        else:
            pick[arg.name] = ("whole", 0)
    if len(rows) > 1:
        raise ValueError(f"{samples}: inputs disagree on the number of rows: {sorted(rows)}")
    for i in range(rows.pop() if rows else 1):
        feeds = {}
        for name, (how, axis) in pick.items():
            array = arrays[name]
            if how == "stacked":
                feeds[name] = array[i]
            elif how == "axis":
                feeds[name] = np.take(array, [i], axis=axis)
            else:
                feeds[name] = array
            feeds[name] = np.array(feeds[name], order="C")  # ascontiguousarray makes 0-d 1-d
        yield feeds


def first_call(samples: Path, session: ort.InferenceSession) -> dict[str, np.ndarray]:
    return next(model_calls(samples, session))
