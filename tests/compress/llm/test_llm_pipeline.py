"""`onnxship compress` on a causal-LM folder, as a user and the operator's Job run it: the
weight-only variant or the auto search, the generation gate, the whole folder in the store,
and back on disk through serve's fetch, where ONNX Runtime GenAI loads it and generates."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import onnxruntime as ort
import onnxruntime_genai as og
import pytest
from typer.testing import CliRunner

from onnxship.cli.app import ExitCode
from onnxship.cli.main import app
from onnxship.compress.result import RESULT_LIMIT
from onnxship.plan import workloads as w
from onnxship.plan.compression_jobs import environment_record
from onnxship.serve.config import ServeConfig
from onnxship.serve.loader import resolve_model_file
from onnxship.store import open_store
from onnxship.store.layout import blob_key
from tests.store.conftest import CREDENTIALS, REGION, S3Server

runner = CliRunner()
SMOLLM2 = Path(__file__).resolve().parents[3] / ".cache" / "models" / "smollm2-fp32"


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    """Two prompts (a chat and a text) keep the gate to a few seconds on the tiny decoder."""
    path = tmp_path / "prompts.jsonl"
    lines = [
        {"messages": [{"role": "user", "content": "What is the capital of France?"}]},
        {"text": "Once upon a time"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS.secret_access_key)
    monkeypatch.setenv("AWS_REGION", REGION)
    return s3_server


def compress_cli(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["--log-format", "json", "compress", *args])


def generate(folder: Path, text: str, tokens: int = 8) -> list[int]:
    model = og.Model(str(folder))
    tok = og.Tokenizer(model)
    ids = tok.encode(text)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + tokens)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    while not gen.is_done():
        gen.generate_next_token()
    return list(gen.get_sequence(0))[len(ids) :]


def test_weight_only_to_s3_and_back_through_serve_fetch(
    tiny_llm: Path, prompts: Path, s3_env: S3Server, tmp_path: Path
) -> None:
    bucket = s3_env.new_bucket()
    store_uri = f"s3://{bucket}/artifacts/"
    result_file = tmp_path / "result.json"
    args = [
        str(tiny_llm),
        "--store", store_uri,
        "--endpoint", s3_env.endpoint,
        "--samples", str(prompts),
        "--quantize", "weightOnly",
        "--bits", "8",
        "--gate-metric", "kl",
        "--gate-max", "0.3",
    ]  # fmt: skip
    result = compress_cli(*args, "-o", "json", "--result-file", str(result_file))
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    manifest = doc["manifest"]
    assert manifest["kind"] == "causal-lm"
    names = {b["name"] for b in manifest["blobs"]}
    assert names == {p.name for p in tiny_llm.iterdir()}  # every file of the folder
    client = s3_env.client()
    for blob in manifest["blobs"]:  # each one in the bucket, under its digest
        key = "artifacts/" + blob_key(blob["digest"], blob["encoding"])
        client.head_object(Bucket=bucket, Key=key)
    accuracy = doc["report"]["accuracy"]
    assert accuracy["metric"] == "kl" and accuracy["passed"] and accuracy["klMean"] <= 0.3
    assert 0 <= accuracy["top1Agreement"] <= 1 and 0 <= accuracy["tokenAgreement"] <= 1
    assert len(accuracy["perPrompt"]) == 2
    assert doc["report"]["compressedBytes"] < doc["report"]["originalBytes"] * 0.6

    # The Job's result: compact, and what the ModelDeployment's status shows.
    text = result_file.read_text()
    assert len(text) <= RESULT_LIMIT
    summary = environment_record("cpu", "CPU", json.loads(text), reused=False).compression
    assert summary is not None
    assert summary.kind == "causal-lm" and summary.variant == "int8-rtn-b32-emb8"
    assert summary.kl_mean == accuracy["klMean"] and summary.top1 == accuracy["top1Agreement"]
    assert summary.token_agreement == accuracy["tokenAgreement"]

    # serve --store --cache-key: the whole folder on disk, verified, and it generates.
    config = ServeConfig(
        store_uri=store_uri,
        cache_key=doc["cacheKey"],
        store_endpoint=s3_env.endpoint,
        store_region=REGION,
        cache_dir=tmp_path / "serve-cache",
    )
    graph = resolve_model_file(config)
    folder = graph.parent
    assert {p.name for p in folder.iterdir()} == names
    assert len(generate(folder, "The capital of France is")) == 8
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    assert "logits" in [o.name for o in session.get_outputs()]

    # Again: a cache hit, judged on the stored figures against the gate given now.
    again = compress_cli(*args, "-o", "json")
    assert again.exit_code == 0 and json.loads(again.stdout)["cacheHit"]
    stricter = [*args[:-1], "0.000001"]
    refused = compress_cli(*stricter, "-o", "json")
    assert refused.exit_code == ExitCode.accuracy_gate, refused.output
    assert "accuracyGate.max" in json.loads(refused.stdout.splitlines()[0])["error"]


def test_auto_walks_the_candidates_cheapest_first_and_reports_each(
    tiny_llm: Path, prompts: Path, tmp_path: Path
) -> None:
    store_uri = (tmp_path / "store").as_uri()
    result = compress_cli(
        str(tiny_llm), "--store", store_uri, "--samples", str(prompts),
        "--quantize", "auto", "--gate-metric", "top1", "--gate-min", "0.5",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for words in ("causal-lm", "variant", "teacher-forced top-1", "mean KL", "free-run tokens"):
        assert words in result.stdout, result.stdout
    (manifest,) = open_store(store_uri).list_manifests()
    hqq, kquant, int8 = manifest.report.candidates
    assert (hqq.name, kquant.name, int8.name) == (
        "int4-hqq-b32-emb8",
        "int4-kquantMixed-b32-emb8",
        "int8-rtn-b32-emb8",
    )
    # On the tiny random decoder HQQ's 4 bits lose the next token (top-1 ~0.3), k-quant with
    # 8-bit sensitive MatMuls keeps half of them (~0.56): the first that passes is published.
    assert hqq.accuracy is not None and not hqq.passed and hqq.why == "failed the gate"
    assert kquant.chosen and kquant.passed and kquant.accuracy is not None
    assert int8.accuracy is None and not int8.chosen and "not tried" in int8.why
    accuracy = manifest.report.accuracy
    assert accuracy is not None and accuracy == kquant.accuracy and accuracy.mean >= 0.5
    assert manifest.report.steps == ["quantize:weightOnly:int4-kquantMixed-b32-emb8"]


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--quantize", "static"], "spec.compression.quantize.mode (--quantize)"),
        (["--quantize", "dynamic", "--per-tensor"], "spec.compression.quantize.mode"),
        (["--gate-metric", "cosine", "--gate-min", "0.95"], "accuracyGate.metric"),
        (["--quantize", "weightOnly", "--sparsity", "0.5"], "prune.sparsity (--sparsity)"),
    ],
)
def test_settings_that_do_not_apply_to_a_causal_lm(
    tiny_llm: Path, tmp_path: Path, flags: list[str], field: str
) -> None:
    store = tmp_path / "store"
    result = compress_cli(str(tiny_llm), "--store", store.as_uri(), "-o", "json", *flags)
    assert result.exit_code == ExitCode.invalid_spec, result.output
    error = json.loads(result.stdout.splitlines()[0])["error"]
    assert field in error, error
    if "mode" in field:
        assert "weightOnly, auto, none" in error
    assert not store.exists()


def test_a_failed_gate_publishes_nothing_and_reports_each_prompt(
    tiny_llm: Path, prompts: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    result = compress_cli(
        str(tiny_llm), "--store", store.as_uri(), "--samples", str(prompts), "-o", "json",
        "--quantize", "weightOnly", "--algorithm", "hqq", "--gate-metric", "top1",
        "--gate-min", "0.9",
    )  # fmt: skip
    assert result.exit_code == ExitCode.accuracy_gate, result.output
    doc = json.loads(result.stdout.splitlines()[0])
    assert "spec.compression.accuracyGate.min" in doc["error"]
    assert len(doc["report"]["accuracy"]["perPrompt"]) == 2
    (candidate,) = doc["report"]["candidates"]
    assert candidate["name"] == "int4-hqq-b32-emb8" and candidate["why"] == "failed the gate"
    assert not store.exists() or not any(p.is_file() for p in store.rglob("*"))


def test_a_graph_named_otherwise_is_published_as_model_onnx(
    tiny_llm: Path, prompts: Path, tmp_path: Path
) -> None:
    folder = Path(shutil.copytree(tiny_llm, tmp_path / "llm"))
    (folder / "model.onnx").rename(folder / "decoder.onnx")
    config = json.loads((folder / "genai_config.json").read_text())
    config["model"]["decoder"]["filename"] = "decoder.onnx"
    (folder / "genai_config.json").write_text(json.dumps(config))
    store = open_store((tmp_path / "store").as_uri())
    result = compress_cli(
        str(folder), "--store", store.uri, "--samples", str(prompts), "-o", "json",
        "--quantize", "weightOnly", "--bits", "8", "--gate-metric", "top1", "--gate-min", "0.5",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (manifest,) = store.list_manifests()
    fetched = store.fetch(manifest, tmp_path / "back")
    assert fetched.name == "model.onnx" and not (tmp_path / "back" / "decoder.onnx").exists()
    assert json.loads((fetched.parent / "genai_config.json").read_text())["model"]["decoder"][
        "filename"
    ] == "model.onnx"
    assert len(generate(fetched.parent, "Hello")) == 8


def test_quantize_none_stores_the_folder_as_it_is(tiny_llm: Path, tmp_path: Path) -> None:
    """Byte for byte, files in subfolders too, and back through the store's fetch."""
    folder = Path(shutil.copytree(tiny_llm, tmp_path / "llm"))
    (folder / "docs").mkdir()
    (folder / "docs" / "MODEL_CARD.md").write_text("# tiny decoder\n")
    store = open_store((tmp_path / "store").as_uri())
    result = compress_cli(str(folder), "--store", store.uri, "--quantize", "none")
    assert result.exit_code == 0, result.output
    assert "causal-lm" in result.stdout and "original" in result.stdout
    (manifest,) = store.list_manifests()
    assert manifest.kind == "causal-lm" and manifest.report.accuracy is None
    digests = {b.name: b.digest for b in manifest.blobs}
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert digests == {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in files
    }
    back = store.fetch(manifest, tmp_path / "back").parent
    assert (back / "docs" / "MODEL_CARD.md").read_text() == "# tiny decoder\n"


def test_the_operators_job_carries_the_causal_lm_settings() -> None:
    """The compression Job runs `onnxship compress` with flags built from the spec: every
    weight-only setting, the kl gate's max and the kind reach the command's parser."""
    from tests.plan.test_workloads import STORE, _parse, spec

    s = spec(
        model={"uri": "s3://m/llm/", "kind": "causal-lm"},
        compression={
            "quantize": {
                "mode": "weightOnly", "bits": 8, "blockSize": 64, "symmetric": False,
                "accuracyLevel": 1, "algorithm": "kquantMixed", "embedding": "keep",
            },
            "accuracyGate": {"metric": "kl", "max": 0.05},
        },
    )  # fmt: skip
    env = s.serving.effective_environments()[0]
    parsed = _parse("compress", w.compress_args(s, s.compression, env, STORE))
    assert parsed["quantize"] == "weightOnly" and parsed["kind"] == "causal-lm"
    assert (parsed["bits"], parsed["block_size"], parsed["accuracy_level"]) == (8, 64, 1)
    assert parsed["algorithm"] == "kquantMixed" and parsed["embedding"] == "keep"
    assert parsed["symmetric"] is False
    assert (parsed["gate_metric"], parsed["gate_max"]) == ("kl", 0.05)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the gate runs fp32 SmolLM2 on 16 prompts, then each candidate
@pytest.mark.skipif(
    not (SMOLLM2 / "model.onnx.data").is_file(), reason="run scripts/materialize-smollm2.sh first"
)
def test_smollm2_with_defaults(tmp_path: Path) -> None:
    """The real model, settings left as they are: auto against top-1 >= 0.90 on the built-in
    prompts; the variant published is smaller and still answers."""
    store = open_store((tmp_path / "store").as_uri())
    result = compress_cli(str(SMOLLM2), "--store", store.uri, "-o", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    report = doc["report"]
    assert doc["manifest"]["kind"] == "causal-lm"
    assert report["accuracy"]["metric"] == "top1" and report["accuracy"]["mean"] >= 0.90
    assert report["compressedBytes"] <= report["originalBytes"] / 1.9
    assert any("built-in" in n for n in report["notes"])
    assert any("auto" in n for n in report["notes"])
    (manifest,) = store.list_manifests()
    folder = store.fetch(manifest, tmp_path / "back").parent
    assert len(generate(folder, "The capital of France is", 4)) == 4
