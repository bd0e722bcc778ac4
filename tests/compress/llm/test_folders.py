"""A causal-LM folder is untrusted input, every file of it: each damage is refused with exit 4
naming the file at fault, and nothing reaches the store (file:// and S3)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from onnxship.api import Compression, ModelKind
from onnxship.cli.app import ExitCode
from onnxship.cli.main import app
from onnxship.compress import InvalidModelError, SourceAccess, SourceError, compress
from onnxship.compress.llm.folder import folder_digest
from onnxship.compress.source import fetch_model
from onnxship.store import ArtifactStore, open_store
from tests.store.conftest import CREDENTIALS, REGION, S3Server

runner = CliRunner()


@pytest.fixture
def folder(tiny_llm: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny decoder folder, free to damage."""
    return Path(shutil.copytree(tiny_llm, tmp_path / "llm"))


@pytest.fixture(params=["file", "s3"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "file":
        return open_store((tmp_path / "store").as_uri())
    server: S3Server = request.getfixturevalue("s3_server")
    return server.store(f"s3://{server.new_bucket()}/team-a/")


def compress_cli(model: Path, store_uri: str, *extra: str):  # type: ignore[no-untyped-def]
    args = [str(model), "--store", store_uri, "-o", "json", *extra]
    return runner.invoke(app, ["--log-format", "json", "compress", *args])


def refused_by_cli(model: Path, store_dir: Path, names: str, match: str) -> str:
    result = compress_cli(model, store_dir.as_uri(), "--quantize", "weightOnly")
    assert result.exit_code == ExitCode.invalid_model, result.output
    doc = json.loads(result.stdout.splitlines()[0])
    assert names in doc["error"], doc["error"]  # the message names the file
    assert match in doc["error"], doc["error"]
    assert not store_dir.exists() or not any(p.is_file() for p in store_dir.rglob("*"))
    return str(doc["error"])


def test_missing_genai_config(folder: Path, tmp_path: Path) -> None:
    (folder / "genai_config.json").unlink()
    refused_by_cli(folder, tmp_path / "store", str(folder / "genai_config.json"), "missing")


def test_a_decoder_graph_alone_needs_its_genai_config(folder: Path, tmp_path: Path) -> None:
    # The graph's signature (past_key_values in, logits/present out) makes it a causal LM.
    (folder / "genai_config.json").unlink()
    refused_by_cli(
        folder / "model.onnx", tmp_path / "store", str(folder / "genai_config.json"), "missing"
    )


def test_a_truncated_data_file(folder: Path, tmp_path: Path) -> None:
    data = folder / "model.onnx.data"
    with data.open("r+b") as f:
        f.truncate(data.stat().st_size - 4096)
    refused_by_cli(folder, tmp_path / "store", "model.onnx.data", "truncated")


def test_external_data_outside_the_folder(folder: Path, tmp_path: Path) -> None:
    # The data exists outside, with the right size: only the path gives it away.
    shutil.copyfile(folder / "model.onnx.data", tmp_path / "outside.bin")
    model = onnx.load_model(str(folder / "model.onnx"), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../outside.bin"
    onnx.save_model(model, str(folder / "model.onnx"))
    error = refused_by_cli(folder, tmp_path / "store", str(folder / "model.onnx"), "../outside.bin")
    assert "inside the model's folder" in error


def test_a_tokenizer_with_more_tokens_than_the_model(folder: Path, tmp_path: Path) -> None:
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["added_tokens"].append({**tok["added_tokens"][-1], "id": 50300, "content": "<|extra|>"})
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    error = refused_by_cli(folder, tmp_path / "store", str(folder / "tokenizer.json"), "50300")
    assert "49152" in error


def test_another_models_smaller_tokenizer(folder: Path, tmp_path: Path) -> None:
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["model"]["vocab"] = {k: v for k, v in tok["model"]["vocab"].items() if v < 32000}
    tok["model"]["merges"] = []
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    refused_by_cli(folder, tmp_path / "store", str(folder / "tokenizer.json"), "another model")


def test_genai_config_naming_a_missing_graph(folder: Path, tmp_path: Path) -> None:
    config = json.loads((folder / "genai_config.json").read_text())
    config["model"]["decoder"]["filename"] = "decoder.onnx"
    (folder / "genai_config.json").write_text(json.dumps(config))
    config_file = str(folder / "genai_config.json")
    error = refused_by_cli(folder, tmp_path / "store", config_file, "decoder.onnx")
    assert "not in the folder" in error


@pytest.mark.parametrize("name", ["genai_config.json", "tokenizer_config.json", "tokenizer.json"])
def test_malformed_json(folder: Path, tmp_path: Path, name: str) -> None:
    text = (folder / name).read_text()
    (folder / name).write_text(text[: len(text) // 2])
    refused_by_cli(folder, tmp_path / "store", str(folder / name), "malformed JSON")


def test_a_symbolic_link_leaving_the_folder(folder: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("not yours")
    (folder / "notes.txt").symlink_to(tmp_path / "secret.txt")
    refused_by_cli(folder, tmp_path / "store", "notes.txt", "leaves the model's folder")


DAMAGES: dict[str, Callable[[Path], None]] = {
    "no genai_config": lambda d: (d / "genai_config.json").unlink(),
    "truncated data": lambda d: (d / "model.onnx.data").write_bytes(
        (d / "model.onnx.data").read_bytes()[:-8192]
    ),
    "wrong tokenizer": lambda d: (d / "tokenizer.json").write_text(
        json.dumps({"model": {"type": "BPE", "vocab": {"a": 0, "b": 60000}}, "added_tokens": []})
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_nothing_reaches_either_store(
    damage: str, tiny_llm: Path, tmp_path: Path, s3_server: S3Server, target: ArtifactStore
) -> None:
    """The damaged folder comes from S3 (a prefix) and goes to file:// or S3: no blob, no
    manifest, whatever step refused it."""
    source = s3_server.new_bucket()
    local = Path(shutil.copytree(tiny_llm, tmp_path / "src"))
    DAMAGES[damage](local)
    client = s3_server.client()
    for path in local.iterdir():
        client.upload_file(str(path), source, f"models/tiny/{path.name}")
    access_env = access_for(s3_server)
    with pytest.raises(InvalidModelError):
        compress(
            f"s3://{source}/models/tiny/",
            Compression(),
            target,
            source_access=access_env,
        )
    assert target.list_manifests() == []
    root = getattr(target, "root", None)
    if root is not None:
        assert not root.exists() or not any(p.is_file() for p in root.rglob("*"))
    else:
        bucket = target.bucket  # type: ignore[attr-defined]
        assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def access_for(server: S3Server) -> SourceAccess:
    return SourceAccess(endpoint=server.endpoint, region=REGION, credentials=CREDENTIALS)


def sha256sum_digest(folder: Path) -> str:
    """What the README's shell line computes: sha256sum over every file, names sorted."""
    lines = ""
    for path in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix().encode()):
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            lines += f"{digest}  {path.relative_to(folder).as_posix()}\n"
    return hashlib.sha256(lines.encode()).hexdigest()


def test_a_folder_is_pinned_by_its_files_or_its_graph(
    folder: Path, tmp_path: Path, s3_server: S3Server
) -> None:
    local = fetch_model(folder.as_uri(), tmp_path / "w1")
    assert local.folder == folder and local.path == folder / "model.onnx"
    assert local.sha256 == sha256sum_digest(folder) == folder_digest(local.digests)
    graph = hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
    fetch_model(folder.as_uri(), tmp_path / "w2", expected_sha256=graph)

    # The same folder from an S3 prefix: every file fetched, the same digests.
    bucket = s3_server.new_bucket()
    for path in folder.iterdir():
        s3_server.client().upload_file(str(path), bucket, f"m/v1/{path.name}")
    access = access_for(s3_server)
    remote = fetch_model(
        f"s3://{bucket}/m/v1", tmp_path / "w3", access=access, expected_sha256=local.sha256
    )
    assert remote.folder is not None and remote.digests == local.digests
    assert sorted(p.name for p in remote.folder.iterdir()) == sorted(local.digests)
    # A URI naming the graph in the prefix brings the folder with it.
    via_graph = fetch_model(f"s3://{bucket}/m/v1/model.onnx", tmp_path / "w4", access=access)
    assert via_graph.sha256 == local.sha256

    with pytest.raises(SourceError, match="sha256 mismatch"):
        fetch_model(folder.as_uri(), tmp_path / "w5", expected_sha256="0" * 64)
    # kind onnx keeps the graph a single model.
    single = fetch_model(folder.as_uri(), tmp_path / "w6", kind=ModelKind.onnx)
    assert single.folder is None and single.sha256 == graph
