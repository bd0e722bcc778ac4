"""Sample inputs as CONTRACTS.md §1 reads them, and inputs made up from a signature (pure)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto

from onnxship.compress import SourceError
from onnxship.compress.samples import Layout, load_samples, synthesize, warmup_feed
from onnxship.compress.validate import TensorSpec

VAD = [
    TensorSpec("input", TensorProto.FLOAT, (None, None)),
    TensorSpec("state", TensorProto.FLOAT, (2, None, 128)),
    TensorSpec("sr", TensorProto.INT64, ()),
]
CAPTCHA = [TensorSpec("input1", TensorProto.FLOAT, (1, 1, 64, "image_width"))]


def npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "s.npz"
    np.savez(path, **arrays)
    return path


def test_rows_on_each_inputs_batch_axis_and_a_scalar_with_every_call(tmp_path: Path) -> None:
    path = npz(tmp_path, input=np.zeros((5, 576), np.float32),
               state=np.arange(2 * 5 * 128, dtype=np.float32).reshape(2, 5, 128),
               sr=np.array(16000))  # fmt: skip
    s = load_samples(path, VAD)
    assert s.rows == 5 and not s.one_per_call
    assert s.layouts == {"input": Layout("axis", 0), "state": Layout("axis", 1),
                         "sr": Layout("whole")}  # fmt: skip
    first, second = s.batches(3)
    assert first["state"].shape == (2, 3, 128) and second["state"].shape == (2, 2, 128)
    whole = np.arange(1280, dtype=np.float32).reshape(2, 5, 128)
    assert np.array_equal(second["state"], whole[:, 3:])
    assert first["sr"].shape == () and first["sr"].dtype == np.int64


@pytest.mark.parametrize("shape", [(6, 1, 1, 64, 192), (6, 1, 64, 192)])
def test_a_batch_fixed_at_1_is_fed_one_sample_at_a_time(tmp_path: Path, shape: tuple) -> None:
    s = load_samples(npz(tmp_path, input1=np.zeros(shape, np.float32)), CAPTCHA)
    assert s.rows == 6 and s.one_per_call
    assert [f["input1"].shape for f in s.batches(32)] == [(1, 1, 64, 192)] * 6
    assert "one sample at a time" in s.note


def test_rows_beyond_the_limit_are_cut_with_a_note(tmp_path: Path) -> None:
    spec = [TensorSpec("x", TensorProto.FLOAT, ("batch", 4))]
    s = load_samples(npz(tmp_path, x=np.zeros((300, 4), np.float32)), spec, max_rows=256)
    assert s.rows == 256 and "first 256 of 300 rows" in s.note


def test_the_digest_changes_with_the_values(tmp_path: Path) -> None:
    spec = [TensorSpec("x", TensorProto.FLOAT, ("batch", 4))]
    a = load_samples(npz(tmp_path, x=np.zeros((3, 4), np.float32)), spec)
    b = load_samples(npz(tmp_path, x=np.ones((3, 4), np.float32)), spec)
    assert a.digest != b.digest and len(a.digest) == 64
    assert a.digest == load_samples(npz(tmp_path, x=np.zeros((3, 4), np.float32)), spec).digest


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"input": np.zeros((5, 9)), "state": np.zeros((2, 4, 128)), "sr": np.array(8000)},
         "disagree on the number of rows"),
        ({"input": np.zeros((5, 9)), "state": np.zeros((5, 2, 128)), "sr": np.array(8000)},
         r"state is shaped \[5, 2, 128\].*\[2, \?, 128\].*fixed dimension"),
        ({"input": np.zeros((5, 9)), "state": np.zeros((2, 5, 128))}, "lack sr"),
    ],
)  # fmt: skip
def test_samples_that_do_not_fit_say_which_input_and_why(
    tmp_path: Path, arrays: dict, message: str
) -> None:
    with pytest.raises(SourceError, match=message):
        load_samples(npz(tmp_path, **arrays), VAD)


def test_made_up_inputs_keep_fixed_dims_dtypes_and_readable_values() -> None:
    specs = [
        *VAD,
        TensorSpec("bytes", TensorProto.INT32, ("batch", 2048)),
        TensorSpec("attention_mask", TensorProto.INT64, ("batch", "seq")),
    ]
    s = synthesize(specs, rows=4)
    feed = s.batches(4)[0]
    assert feed["state"].shape == (2, 4, 128) and feed["input"].shape == (4, 16)
    assert feed["sr"].shape == () and int(feed["sr"]) == 16000
    assert feed["bytes"].dtype == np.int32 and 0 <= feed["bytes"].min() <= feed["bytes"].max() < 256
    assert (feed["attention_mask"] == 1).all()
    assert s.synthetic and "made-up" in s.note and warmup_feed(s) is None
    fixed = synthesize(CAPTCHA, rows=3, dim=32)
    assert fixed.one_per_call
    assert [f["input1"].shape for f in fixed.batches(8)] == [(1, 1, 64, 32)] * 3
