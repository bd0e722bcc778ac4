#!/usr/bin/env python
"""Compression of a decoder LLM: quality, size, decode speed and memory, each beside an anchor.

    .venv/bin/python bench/llm_compress.py [--prompts 64] [--speed-prompts 4] [--rounds 2]
        [--big-gb 4.2 | --skip-big] [--skip-smollm2] [--out-json F]

SmolLM2-135M-Instruct fp32 (.cache/models/smollm2-fp32, scripts/materialize-smollm2.sh):
- per weight-only variant of ``llm_candidates()`` (what ``quantize: auto`` walks) and per
  anchor (ONNX Runtime's MatMulNBitsQuantizer with its defaults, built by
  ../shared/models/smollm2/build/ortq_default.py's method): bytes of the folder; teacher-forced
  top-1, mean KL and free-run token agreement on the first N prompts of prompts.jsonl (the gate,
  compress/llm/gate.py, which follows measure.py's method); decode tokens/s in ONNX Runtime
  GenAI with measure.py's own ``speed`` (fp32 and ORT's quantizer measured in the same run);
  the builder's int4 and k_quant_mixed figures of baseline.json beside them (measured on this
  kind of machine, not in this run);
- peak RSS of the quantization step in a child process, ours and ORT's quantizer, over the
  model's size; and of a whole ``onnxship compress`` (quantize: auto, gate top-1 >= 0.90, the
  gate included) in a child process;
and a Llama-shaped decoder with random weights of about ``--big-gb`` GB that this script writes
to disk tensor by tensor (never held in memory): peak RSS of the quantization step and of a
whole compress (2 prompts), over its size.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT)]

from onnxship.compress.llm import gate  # noqa: E402
from onnxship.compress.llm.prompts import load_prompts  # noqa: E402
from onnxship.compress.llm.weights import copy_companions, llm_candidates  # noqa: E402

SMOLLM2 = ROOT / ".cache" / "models" / "smollm2-fp32"
SHARED = ROOT.parent / "shared" / "models" / "smollm2"
PY = sys.executable

QUANTIZE_CHILD = """
import json, resource, sys, time
from pathlib import Path
from onnxship.api import Quantize
from onnxship.compress.llm.weights import quantize_weight_only
t = time.perf_counter()
notes = quantize_weight_only(Path(sys.argv[1]), Path(sys.argv[2]),
                             Quantize.model_validate_json(sys.argv[3]))
print(json.dumps({"seconds": time.perf_counter() - t, "notes": notes,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

ORT_CHILD = """
import json, os, resource, sys, time
import onnx
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
t = time.perf_counter()
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
quantizer = MatMulNBitsQuantizer(onnx.load(os.path.join(src, "model.onnx")))
quantizer.process()
onnx.save_model(quantizer.model.model, os.path.join(dst, "model.onnx"), save_as_external_data=True,
                all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=1024)
print(json.dumps({"seconds": time.perf_counter() - t,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

# a whole `onnxship compress` in a grandchild; this child reports the grandchild's peak RSS
COMPRESS_CHILD = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"seconds": time.perf_counter() - t, "exit": done.returncode,
                  "stdout": done.stdout[-6000:], "stderr": done.stderr[-3000:],
                  "peak_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))
"""


def child(code: str, *args: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'operator'}:{ROOT}")
    done = subprocess.run([PY, "-c", code, *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"error": done.stderr[-3000:]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def measure_speed(folder: Path, prompts: int, rounds: int) -> dict[str, Any]:
    """measure.py's own speed method (GenAI, forced 48 tokens, best round), fewer prompts."""
    spec = importlib.util.spec_from_file_location("smollm2_measure", SHARED / "measure.py")
    assert spec and spec.loader
    measure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(measure)
    measure.SPEED_PROMPTS, measure.ROUNDS = prompts, rounds
    rows = measure.load_jsonl(SHARED / "prompts.jsonl")
    row = measure.speed(folder.name, str(folder), rows)
    return {k: v for k, v in row.items() if k != "dir"}


def smollm2(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    if not (SMOLLM2 / "model.onnx.data").exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "materialize-smollm2.sh")], check=False)
    if not (SMOLLM2 / "model.onnx.data").exists():
        return {"skipped": f"{SMOLLM2} missing: run scripts/materialize-smollm2.sh"}
    model_bytes = folder_bytes(SMOLLM2)
    data_bytes = (SMOLLM2 / "model.onnx.data").stat().st_size
    out: dict[str, Any] = {"model_bytes": model_bytes, "data_bytes": data_bytes, "variants": {}}
    folders: dict[str, Path] = {"fp32": SMOLLM2}
    for name, q in llm_candidates():
        dst = work / name
        r = child(QUANTIZE_CHILD, str(SMOLLM2 / "model.onnx"), str(dst), q.model_dump_json())
        if "error" in r:
            out["variants"][name] = r
            continue
        copy_companions(SMOLLM2, dst)
        folders[name] = dst
        out["variants"][name] = {**r, "bytes": folder_bytes(dst), "kind": "ours"}
        print(name, json.dumps({k: v for k, v in r.items() if k != "notes"}), flush=True)
    dst = work / "ort-matmulnbits-default"
    r = child(ORT_CHILD, str(SMOLLM2), str(dst))
    if "error" not in r:
        copy_companions(SMOLLM2, dst)
        folders[dst.name] = dst
        r.update(bytes=folder_bytes(dst))
    out["variants"][dst.name] = {**r, "kind": "anchor"}
    print(dst.name, json.dumps(r)[:300], flush=True)
    out["variants"]["fp32"] = {"bytes": model_bytes, "kind": "anchor"}

    # speed first, one model after another (nothing else running in this process)
    for name, folder in folders.items():
        out["variants"][name]["speed"] = measure_speed(folder, args.speed_prompts, args.rounds)
        print(name, "speed", json.dumps(out["variants"][name]["speed"])[:300], flush=True)

    prompts = load_prompts(SHARED / "prompts.jsonl", SMOLLM2).ids[: args.prompts]
    out["prompts"] = len(prompts)
    t = time.perf_counter()
    with gate.build_reference(SMOLLM2, prompts, work / "reference") as reference:
        out["reference_seconds"] = time.perf_counter() - t
        for name, folder in folders.items():
            t = time.perf_counter()
            found = gate.compare(reference, folder)
            out["variants"][name]["quality"] = {
                **found.as_dict(), "seconds": time.perf_counter() - t
            }
            print(name, json.dumps(found.as_dict()), flush=True)
    baseline = json.loads((SHARED / "baseline.json").read_text())["models"]
    out["baseline_json"] = {
        k: {"bytes": v["bytes"], "top1": v["quality"]["teacher_forced_top1"],
            "kl_mean": v["quality"]["kl_mean"],
            "token_agreement": v["quality"]["free_run_agreement"],
            "decode_tok_s_b1": v["speed"]["decode_tok_s_b1"]}
        for k, v in baseline.items()
    }  # fmt: skip
    if not args.skip_compress:
        out["compress"] = whole_compress(SMOLLM2, work, args.compress_prompts, model_bytes)
    return out


AUTO = ["--quantize", "auto", "--gate-metric", "top1", "--gate-min", "0.90"]


def whole_compress(
    folder: Path, work: Path, prompts: int, size: int, settings: list[str] = AUTO
) -> dict[str, Any]:
    """`onnxship compress` (by default auto, gate top-1 >= 0.90) on a few prompts, its peak
    RSS."""
    samples = work / "compress-prompts.jsonl"
    lines = (SHARED / "prompts.jsonl").read_text().splitlines()[:prompts]
    samples.write_text("\n".join(lines) + "\n")
    store = work / "store"
    cli = str(Path(PY).parent / "onnxship")
    r = child(COMPRESS_CHILD, cli, "--log-format", "json", "compress", str(folder),
              "--store", store.as_uri(), "--samples", str(samples), "-o", "json",
              *settings)  # fmt: skip
    r["model_bytes"] = size
    if "peak_rss" in r:
        r["peak_rss_x"] = r["peak_rss"] / size
    try:
        doc = json.loads(r.get("stdout", "").strip().splitlines()[-1])
        r["result"] = {k: doc.get(k) for k in ("variant", "bytes", "ratio", "accuracy", "kind")}
    except (IndexError, ValueError, AttributeError):
        pass
    print("compress", json.dumps({k: v for k, v in r.items() if k != "stdout"})[:600], flush=True)
    shutil.rmtree(store, ignore_errors=True)
    return r


# ------------------------------------------------------------------ the big random decoder
class _Lazy:
    """A weight written straight to the data file when the graph builder asks for it."""

    def __init__(self, shape: tuple[int, ...], std: float, mean: float = 0.0) -> None:
        self.shape, self.std, self.mean = shape, std, mean


def build_big(out: Path, gigabytes: float, seed: int = 0) -> dict[str, Any]:
    """A Llama-shaped GenAI folder (tests/helpers/tiny_llm.py's graph, vocab 49,152, hidden
    2048, 32/8 heads, MLP 2x) with as many layers as make ``gigabytes``; random weights are
    generated and written 16 MB at a time, so the builder holds none of them."""
    from tests.helpers import tiny_llm

    hidden, heads, kv_heads = 2048, 32, 8
    head, mlp = hidden // heads, 2 * hidden
    per_layer = 4 * (hidden * (heads + 2 * kv_heads) * head + hidden * hidden + 3 * hidden * mlp)
    layers = max(1, round((gigabytes * 1e9 - 4 * hidden * tiny_llm.VOCAB) / per_layer))
    w: dict[str, Any] = {}
    inv_freq = 1.0 / tiny_llm.ROPE_THETA ** (np.arange(0, head, 2, dtype=np.float64) / head)
    angles = np.outer(np.arange(tiny_llm.CONTEXT, dtype=np.float64), inv_freq)
    for i in range(layers):
        p = f"model.layers.{i}"
        w[f"{p}.input_layernorm.weight"] = _Lazy((hidden,), 0.1, 1.0)
        w[f"{p}.attn.qkv_proj.MatMul.weight"] = _Lazy(
            (hidden, (heads + 2 * kv_heads) * head), 2.0 / np.sqrt(hidden))
        if i == 0:
            w["cos_cache"] = np.cos(angles).astype(np.float32)
            w["sin_cache"] = np.sin(angles).astype(np.float32)
        w[f"{p}.attn.o_proj.MatMul.weight"] = _Lazy((hidden, hidden), 3.0 / np.sqrt(hidden))
        w[f"{p}.post_attention_layernorm.weight"] = _Lazy((hidden,), 0.1, 1.0)
        w[f"{p}.mlp.gate_proj.MatMul.weight"] = _Lazy((hidden, mlp), 2.0 / np.sqrt(hidden))
        w[f"{p}.mlp.up_proj.MatMul.weight"] = _Lazy((hidden, mlp), 2.0 / np.sqrt(hidden))
        w[f"{p}.mlp.down_proj.MatMul.weight"] = _Lazy((mlp, hidden), 3.0 / np.sqrt(mlp))
    w[f"model.layers.{layers}.final_norm_layernorm.weight"] = _Lazy((hidden,), 0.1, 1.0)
    w["lm_head.MatMul.weight"] = _Lazy((hidden, tiny_llm.VOCAB), 1.0)

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    real = onnx.numpy_helper
    with (out / "model.onnx.data").open("wb") as data:

        class Streaming:
            @staticmethod
            def from_array(a: Any, name: str | None = None) -> onnx.TensorProto:
                if not isinstance(a, _Lazy):
                    a = np.asarray(a)
                    if a.dtype != np.float32 or a.size < 1024:
                        return real.from_array(a, name)
                    shape: tuple[int, ...] = a.shape
                else:
                    shape = a.shape
                data.write(b"\0" * ((-data.tell()) % 4096))
                offset = data.tell()
                count = int(np.prod(shape))
                if isinstance(a, _Lazy):
                    for start in range(0, count, 4 << 20):
                        n = min(4 << 20, count - start)
                        chunk = rng.standard_normal(n, dtype=np.float32) * np.float32(a.std)
                        (chunk + np.float32(a.mean)).tofile(data)
                else:
                    a.tofile(data)
                t = onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT, dims=shape)
                t.data_location = onnx.TensorProto.EXTERNAL
                for k, v in (("location", "model.onnx.data"), ("offset", str(offset)),
                             ("length", str(count * 4))):  # fmt: skip
                    e = t.external_data.add()
                    e.key, e.value = k, v
                return t

        saved = tiny_llm.numpy_helper
        tiny_llm.numpy_helper = Streaming  # type: ignore[assignment]
        try:
            model = tiny_llm._model(w, layers, heads, kv_heads, head)
        finally:
            tiny_llm.numpy_helper = saved
    onnx.save_model(model, out / "model.onnx")
    for name in tiny_llm.TOKENIZER_FILES:
        shutil.copyfile(tiny_llm.SMOLLM2 / name, out / name)
    config = json.loads((tiny_llm.SMOLLM2 / "genai_config.json").read_text())
    config["model"]["context_length"] = tiny_llm.CONTEXT
    config["model"]["decoder"].update(
        head_size=head, hidden_size=hidden, num_attention_heads=heads,
        num_hidden_layers=layers, num_key_value_heads=kv_heads,
    )  # fmt: skip
    config["search"]["max_length"] = tiny_llm.CONTEXT
    (out / "genai_config.json").write_text(json.dumps(config, indent=4) + "\n")
    return {"layers": layers, "hidden": hidden, "bytes": folder_bytes(out)}


def big(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    t = time.perf_counter()
    src = work / "big"
    info = build_big(src, args.big_gb)
    info["build_seconds"] = time.perf_counter() - t
    size = info["bytes"]
    print("big model", json.dumps(info), flush=True)
    # ORT's RTN kernel: the quickest of the algorithms (HQQ's solver runs its 20 iterations on
    # random weights: ~4 min per GB here); memory is bounded the same way for all of them
    name, q = "int4-rtn-b32-emb8", llm_candidates()[0][1].model_copy(
        update={"algorithm": "rtn", "symmetric": True}
    )
    r = child(QUANTIZE_CHILD, str(src / "model.onnx"), str(work / "big-q"), q.model_dump_json())
    if "peak_rss" in r:
        r["peak_rss_x"] = r["peak_rss"] / size
        r["bytes"] = folder_bytes(work / "big-q")
    info["quantize"] = {**r, "variant": name}
    print("big quantize", json.dumps(r)[:400], flush=True)
    shutil.rmtree(work / "big-q", ignore_errors=True)
    if not args.skip_compress:
        info["compress"] = whole_compress(
            src, work, 2, size, ["--quantize", "weightOnly", "--algorithm", "rtn",
                                 "--embedding", "int8", "--gate-metric", "top1", "--gate-min", "0"]
        )  # fmt: skip
    shutil.rmtree(src, ignore_errors=True)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=64, help="SmolLM2 prompts for quality")
    parser.add_argument("--speed-prompts", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="speed rounds (best is kept)")
    parser.add_argument("--compress-prompts", type=int, default=8)
    parser.add_argument("--big-gb", type=float, default=4.2)
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--skip-compress", action="store_true", help="no whole-compress runs")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--out-json", type=Path, default=None)
    args = parser.parse_args()
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="onnxship-llm-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        if not args.skip_smollm2:
            result["smollm2"] = smollm2(args, work)
            _write(args, result)
        if not args.skip_big:
            result["big"] = big(args, work)
    _write(args, result)


def _write(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(result, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
