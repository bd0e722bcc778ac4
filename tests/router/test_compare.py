"""Output agreement of two v2 answers, JSON or binary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxship.router.compare import compare_answers, decode_outputs


def json_answer(y: np.ndarray) -> bytes:
    out = {"name": "y", "datatype": "FP32", "shape": list(y.shape), "data": y.ravel().tolist()}
    return json.dumps({"outputs": [out]}).encode()


def binary_answer(y: np.ndarray) -> tuple[bytes, int]:
    raw = y.astype("<f4").tobytes()
    out = {"name": "y", "datatype": "FP32", "shape": list(y.shape),
           "parameters": {"binary_data_size": len(raw)}}  # fmt: skip
    head = json.dumps({"outputs": [out]}).encode()
    return head + raw, len(head)


Y = np.array([[0.1, 0.9, 0.0], [0.7, 0.2, 0.1]], dtype=np.float32)


def test_json_and_binary_decode_alike() -> None:
    body, n = binary_answer(Y)
    assert np.allclose(decode_outputs(body, n)["y"], Y)
    assert np.allclose(decode_outputs(json_answer(Y))["y"], Y)


@pytest.mark.parametrize(
    ("other", "cosine", "top1"),
    [
        (Y, 1.0, 1.0),
        (Y * 2, 1.0, 1.0),
        (-Y, -1.0, 0.0),
        (Y[:, ::-1].copy(), None, 0.5),  # row 0 keeps its argmax, row 1 does not
    ],
)
def test_agreement(other: np.ndarray, cosine: float | None, top1: float) -> None:
    body, n = binary_answer(other)
    c = compare_answers(json_answer(Y), None, body, n)
    assert c is not None
    if cosine is not None:
        assert c.cosine == pytest.approx(cosine, abs=1e-6)
    assert c.top1 == top1


def test_different_shapes_disagree_and_garbage_is_not_comparable() -> None:
    c = compare_answers(json_answer(Y), None, json_answer(Y[:1]), None)
    assert c is not None and c.cosine == 0.0 and c.top1 == 0.0
    assert compare_answers(b"not json", None, json_answer(Y), None) is None


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "INT64"])
def test_small_json_answers_compare_as_numpy_does(datatype: str) -> None:
    """Small JSON outputs are compared without numpy: the same figures as the binary path."""
    rng = np.random.default_rng(7)
    dtype = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8"}[datatype]
    for shape in ((4,), (3, 5), (2, 2, 6), (), (1, 7), (1, 1, 3)):
        a = rng.normal(scale=4, size=shape).astype(dtype)
        b = (a + rng.normal(scale=2, size=shape)).astype(dtype)

        def as_json(y: np.ndarray) -> bytes:
            out = {"name": "y", "datatype": datatype, "shape": list(y.shape),
                   "data": y.ravel().tolist()}  # fmt: skip
            return json.dumps({"outputs": [out]}).encode()

        def as_binary(y: np.ndarray) -> tuple[bytes, int]:
            out = {"name": "y", "datatype": datatype, "shape": list(y.shape),
                   "parameters": {"binary_data_size": y.nbytes}}  # fmt: skip
            head = json.dumps({"outputs": [out]}).encode()
            return head + y.tobytes(), len(head)

        small = compare_answers(as_json(a), None, as_json(b), None)
        full = compare_answers(*as_binary(a), *as_binary(b))
        assert small is not None and full is not None
        assert small.top1 == full.top1, shape
        assert small.cosine == pytest.approx(full.cosine, abs=1e-12)
        assert small.max_abs_diff == pytest.approx(full.max_abs_diff, abs=1e-12)


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # NaN's cosine, as before
def test_json_that_only_python_reads_is_still_compared() -> None:
    """NaN, Infinity and integers past 64 bits are not JSON, but Python's encoder writes
    them and a server may: such answers are compared as before (NaN shows), not dropped."""

    def answer(data: str) -> bytes:
        return b'{"outputs":[{"name":"y","datatype":"FP64","shape":[3],"data":[%b]}]}' % (
            data.encode()
        )

    c = compare_answers(answer("1.0, NaN, 2.0"), None, answer("1.0, 2.0, 3.0"), None)
    assert c is not None and np.isnan(c.cosine) and np.isnan(c.max_abs_diff)
    c = compare_answers(answer("3.0, 2.0, 1.0"), None, answer("1.0, 2.0, Infinity"), None)
    assert c is not None and c.max_abs_diff == float("inf") and c.top1 == 0.0
    big = compare_answers(answer("1, 2, 36893488147419103232"), None, answer("1, 2, 3"), None)
    assert big is not None and big.top1 == 1.0
