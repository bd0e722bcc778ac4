"""Untrusted model files, beyond tests/compress/test_untrusted_models.py: random damage.

A damaged model is either refused with a CompressError whose message names the file (and the
store holds no file at all afterwards, blobs included), or, where the damage happens to leave
a valid model (a flipped bit inside a weight), compressed into an artifact ONNX Runtime loads.
Any other exception, from onnx, protobuf or ONNX Runtime, is a failure of this property.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from onnx import helper

from onnxship.api import Compression
from onnxship.compress import CompressError, InvalidModelError, compress
from onnxship.store import open_store
from tests.compress import models as compress_models
from tests.helpers import models as base_models

COMMON = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}
FAST, SLOW = 60, 1000
LOCATION_FAST, LOCATION_SLOW = 200, 1000


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def outcome(path: Path, store_dir: Path, tmp: Path) -> str:
    """'refused' or 'compressed', after checking the property either way."""
    store = open_store(store_dir.as_uri())
    try:
        result = compress(path.as_uri(), Compression(), store, work_dir=tmp)
    except CompressError as exc:
        # Refused at validation (naming the file), by the gate, or by the quantizer.
        assert any(w in str(exc) for w in (str(path), "accuracy gate", "quantization")), str(exc)
        assert files_under(store_dir) == [], "a refused model left files in the store"
        return "refused"
    served = store.fetch(result.manifest, tmp / "fetched")
    ort.InferenceSession(str(served), providers=["CPUExecutionProvider"])
    return "compressed"


@pytest.fixture(scope="module")
def good_model(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    folder = tmp_path_factory.mktemp("good")
    return base_models.save(base_models.mlp(), folder / "model.onnx").read_bytes()


def fresh(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("case")
    path = root / "src" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(data)
    (root / "work").mkdir()
    return path, root / "store", root / "work"


# Anywhere, or in the graph's structure (the header and the tail, after the weights), where
# a flip changes names, types and shapes rather than weight values.
positions = st.one_of(st.integers(0, 10**9), st.integers(0, 400), st.integers(-400, -1))
flips = st.lists(st.tuples(positions, st.integers(0, 7)), min_size=1, max_size=8)


def flip(data: bytes, where: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, bit in where:
        out[pos % len(out)] ^= 1 << bit
    return bytes(out)


@settings(max_examples=FAST, **COMMON)
@given(where=flips)
@example(where=[(65, 7)])  # a name made invalid UTF-8: the checker raised UnicodeDecodeError
# A tensor data type out of range: the checker raised ValueError("Invalid tensor data type 33.")
@example(where=[(12772, 2), (12646, 2), (274, 7), (130, 5), (176, 3), (708347668, 2), (12728, 2),
                (12757, 2)])  # fmt: skip
@example(where=[(-219, 0), (-219, 6)])  # a NaN weight: ORT's quantizer raised AssertionError
# The input declared [batch, 512] against weights of 32 rows: refused without naming the file
@example(where=[(-35, 1)])
def test_byte_flips_are_refused_or_harmless(
    good_model: bytes, tmp_path_factory: pytest.TempPathFactory, where: list[tuple[int, int]]
) -> None:
    outcome(*fresh(tmp_path_factory, flip(good_model, where)))


@settings(max_examples=FAST, **COMMON)
@given(cut=st.floats(0.0, 0.999))
def test_truncations_are_refused(
    good_model: bytes, tmp_path_factory: pytest.TempPathFactory, cut: float
) -> None:
    path, store, work = fresh(tmp_path_factory, good_model[: int(len(good_model) * cut)])
    # A protobuf cut at a field boundary can parse; it must still never publish a model
    # that is missing its tail (the graph's outputs, the opset imports come last).
    assert outcome(path, store, work) == "refused"


@pytest.mark.slow
@settings(max_examples=SLOW, **COMMON)
@given(where=flips)
def test_byte_flips_are_refused_or_harmless_long(
    good_model: bytes, tmp_path_factory: pytest.TempPathFactory, where: list[tuple[int, int]]
) -> None:
    outcome(*fresh(tmp_path_factory, flip(good_model, where)))


@pytest.fixture(scope="module")
def external_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ext")
    return compress_models.save_external(compress_models.encoder_block(), folder / "model.onnx")


def with_external(tmp_path_factory: pytest.TempPathFactory, source: Path) -> Path:
    root = tmp_path_factory.mktemp("extcase")
    shutil.copytree(source.parent, root / "src")
    (root / "outside.bin").write_bytes(b"\0" * 1_000_000)
    return root / "src" / "model.onnx"


def set_external(path: Path, **fields: str) -> None:
    model = onnx.load_model(str(path), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key in fields:
                e.value = fields[e.key]
        have = {e.key for e in t.external_data}
        for key, value in fields.items():
            if key not in have and t.external_data:
                t.external_data.add(key=key, value=value)
    onnx.save_model(model, str(path))


locations = st.one_of(
    st.text(min_size=1, max_size=30),
    st.sampled_from(
        [
            "../outside.bin",
            "/etc/passwd",
            "..",
            ".",
            "",
            "~/x",
            "a/../../outside.bin",
            "weights.bin\0../../outside.bin",
            "..\\outside.bin",
            "C:\\Windows\\x",
            "//server/share/x",
            "weights.bin/",
            "./../outside.bin",
        ]
    ),
).filter(lambda s: s.strip("./") != "weights.bin" or "\0" in s or ".." in s)


@settings(max_examples=LOCATION_FAST, **COMMON)
@given(location=locations)
@example(location="\0")  # was a ValueError from Path.resolve: embedded null byte
def test_external_data_locations_are_checked(
    external_model: Path, tmp_path_factory: pytest.TempPathFactory, location: str
) -> None:
    path = with_external(tmp_path_factory, external_model)
    set_external(path, location=location)
    store = path.parent.parent / "store"
    with pytest.raises(InvalidModelError) as err:
        compress(path.as_uri(), Compression(), open_store(store.as_uri()))
    assert str(path) in str(err.value)
    assert files_under(store) == []


@pytest.mark.slow
@settings(max_examples=LOCATION_SLOW, **COMMON)
@given(location=locations)
def test_external_data_locations_are_checked_long(
    external_model: Path, tmp_path_factory: pytest.TempPathFactory, location: str
) -> None:
    test_external_data_locations_are_checked.hypothesis.inner_test(  # type: ignore[attr-defined]
        external_model, tmp_path_factory, location
    )


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"length": str(2**40)}, "has only"),
        ({"offset": "-4096"}, "has only"),
        ({"offset": str(2**63)}, "has only"),
        ({"length": "12abc"}, "not integers"),
        ({"offset": "1e3"}, "not integers"),
    ],
    ids=["length-1TiB", "negative-offset", "offset-2^63", "length-text", "offset-float"],
)
def test_external_data_declared_larger_than_its_file(
    external_model: Path, tmp_path_factory: pytest.TempPathFactory, fields: dict[str, str],
    match: str,
) -> None:  # fmt: skip
    path = with_external(tmp_path_factory, external_model)
    set_external(path, **fields)
    store = path.parent.parent / "store"
    with pytest.raises(InvalidModelError, match=match):
        compress(path.as_uri(), Compression(), open_store(store.as_uri()))
    assert files_under(store) == []


def test_an_inline_tensor_declared_far_larger_than_the_file(tmp_path: Path) -> None:
    model = base_models.mlp()
    w = model.graph.initializer[0]
    del w.dims[:]
    w.dims.extend([10**5, 10**4])  # 4 GB of float32 declared, 4 bytes present
    w.raw_data = b"\0\0\0\0"
    path = tmp_path / "src" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(model.SerializeToString())
    with pytest.raises(InvalidModelError, match="too small for the declared shape"):
        compress(path.as_uri(), Compression(), open_store((tmp_path / "store").as_uri()))
    assert files_under(tmp_path / "store") == []


@pytest.mark.parametrize(
    ("domain", "version"),
    [("", 0), ("", 10_000), ("ai.onnx.ml", 10_000), ("com.microsoft", 10_000),
     ("ai.onnx.preview.training", 10_000), ("", -1)],
)  # fmt: skip
def test_unknown_opsets_are_refused(tmp_path: Path, domain: str, version: int) -> None:
    model = base_models.mlp()
    if domain:
        model.opset_import.append(helper.make_opsetid(domain, version))
    else:
        model.opset_import[0].version = version
    path = tmp_path / "src" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(model.SerializeToString())
    with pytest.raises(InvalidModelError) as err:
        compress(path.as_uri(), Compression(), open_store((tmp_path / "store").as_uri()))
    assert str(path) in str(err.value) and "opset" in str(err.value)
    assert files_under(tmp_path / "store") == []
