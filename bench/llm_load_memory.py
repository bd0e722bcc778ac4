#!/usr/bin/env python
"""LLM serving: memory at load with the logits cut (serve/llm/runtime.py ``last_rows_graph``).

    .venv/bin/python bench/llm_load_memory.py [--variants int4 int8] [--rounds 2] [--out-json P]

Models: .cache/models/smollm2-ortq-{int4,int8} (see bench/llm_serve_bench.py). Each load runs
in a fresh process, rounds outside, variants and ways inside (plain, memory, mapped, ...):
- plain: the model file as it is (``create_session(model_file)``), the anchor;
- memory: the cut graph with its external data files handed to ORT from read-only memory maps
  (``add_external_initializers_from_files_in_memory``, how serve/llm loaded it before);
- mapped: the cut graph from memory, its external data from the model's folder
  (``create_session(graph=)``: ORT memory-maps them as for a file).
Per load: peak RSS once the session and the KV buffers exist (VmHWM), then RSS and peak after
a warm-up (8 prompts of 38 tokens on 8 slots, 16 decode steps of 8 rows). The cut graphs'
logits of a prompt are compared with the plain graph's last row (exactly equal).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 28, 7018, 411] * 3
PROMPT = PROMPT[:38]


def status() -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {k: int(fields[k].split()[0]) // 1024 for k in ("VmHWM", "VmRSS")}  # MiB


def child(way: str, folder: Path, logits_out: Path) -> None:
    import onnxruntime as ort

    from onnxship.serve.config import ServeConfig
    from onnxship.serve.llm.runtime import DecoderLayout, DecoderRuntime, last_rows_graph
    from onnxship.serve.session import create_session, session_options

    model_file = folder / "model.onnx"
    config = ServeConfig(model_path=folder, threads=1)
    before = status()
    if way == "plain":
        session = create_session(model_file, config)
    else:
        graph = last_rows_graph(model_file, "logits")
        assert graph is not None
        if way == "mapped":
            session = create_session(model_file, config, graph=graph)
        else:  # the previous way: the data files from memory maps
            options = session_options(config)
            with (folder / "model.onnx.data").open("rb") as fh:
                data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            options.add_external_initializers_from_files_in_memory(
                ["model.onnx.data"], [data], [len(data)]
            )
            session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
            data.close()
    runtime = DecoderRuntime(
        session, DecoderLayout.read(folder, session), 8, 512, last_rows=way != "plain"
    )
    load = status()
    first = runtime.prefill(0, PROMPT)
    np.save(logits_out, first)
    for slot in range(1, 8):
        runtime.prefill(slot, PROMPT[: 30 + slot])
    lengths = np.array([38] + [30 + s for s in range(1, 8)])
    for _ in range(16):
        runtime.decode(8, np.full(8, 42), lengths)
        lengths += 1
    warm = status()
    print(json.dumps({"before_mib": before["VmRSS"], "load_peak_mib": load["VmHWM"],
                      "load_rss_mib": load["VmRSS"], "warm_rss_mib": warm["VmRSS"],
                      "warm_peak_mib": warm["VmHWM"]}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="+", default=["int4", "int8"])
    ap.add_argument("--ways", nargs="+", default=["plain", "memory", "mapped"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out-json", type=Path)
    ap.add_argument("--child", nargs=3)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    runs: dict[str, dict[str, list[dict[str, int]]]] = {}
    equal: dict[str, dict[str, bool]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for variant in args.variants:
                folder = ROOT / ".cache" / "models" / f"smollm2-ortq-{variant}"
                for way in args.ways:
                    out = Path(tmp) / f"{variant}-{way}.npy"
                    load_avg = os.getloadavg()[0]
                    proc = subprocess.run(
                        [sys.executable, __file__, "--child", way, str(folder), str(out)],
                        check=True, capture_output=True, text=True,
                    )  # fmt: skip
                    row = json.loads(proc.stdout.strip().splitlines()[-1])
                    row["loadavg"] = round(load_avg, 2)
                    runs.setdefault(variant, {}).setdefault(way, []).append(row)
                    print(r, variant, way, row, flush=True)
                for way in args.ways:
                    same = np.array_equal(
                        np.load(Path(tmp) / f"{variant}-plain.npy"),
                        np.load(Path(tmp) / f"{variant}-{way}.npy"),
                    )
                    equal.setdefault(variant, {})[way] = same and equal.get(variant, {}).get(
                        way, True
                    )
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for variant, ways in runs.items():
        anchor = {k: statistics.median(x[k] for x in ways["plain"]) for k in ways["plain"][0]}
        for way, rows in ways.items():
            med = {k: statistics.median(x[k] for x in rows) for k in rows[0] if k != "loadavg"}
            med.update({f"{k}_vs_plain": round(med[k] / anchor[k], 3) for k in list(med)})
            med["logits_equal_plain_last_row"] = equal[variant][way]
            summary.setdefault(variant, {})[way] = med
    print(json.dumps(summary, indent=1))
    if args.out_json:
        args.out_json.write_text(json.dumps({"summary": summary, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
