"""PNG plots for the benchmark report, from the raw per-benchmark JSON (bench/results/raw/).

    .venv/bin/python bench/plots.py            # redraw every plot from bench/results/raw/

``make_all(raw, out_dir)`` draws what the data allows and returns, per plot, its file name,
title and caption (REPORT.md embeds them); a benchmark that did not run has no plot.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

Plot = dict[str, str]


def _save(fig: Any, out_dir: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    return name


def serve_latency(d: dict[str, Any], out_dir: Path) -> Plot | None:
    samples = d.get("b1_last_round_ms")
    if not samples:
        return None
    labels = {
        "raw": "raw session.run (anchor)",
        "onnxship_binary": "onnxship, HTTP binary",
        "onnxship_json": "onnxship, HTTP JSON",
        "onnxship_grpc": "onnxship, gRPC",
        "fastapi_json": "FastAPI+uvicorn, JSON",
        "kserve_json": "KServe model server, JSON",
    }
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for key, label in labels.items():
        if key not in samples:
            continue
        xs = np.sort(np.asarray(samples[key]))
        ys = np.arange(1, xs.size + 1) / xs.size
        style = {"color": "black", "linewidth": 2.5} if key == "raw" else {"linewidth": 1.6}
        p50, p99 = np.percentile(xs, 50), np.percentile(xs, 99)
        ax.step(xs, ys, where="post", label=f"{label}: p50 {p50:.1f} ms, p99 {p99:.1f} ms", **style)
    ax.set_xscale("log")
    lo = min(min(v) for v in samples.values())
    hi = max(max(v) for v in samples.values())
    nice = [x * 10.0**e for e in range(-1, 5) for x in (1, 2, 3, 5)]
    ax.xaxis.set_major_locator(FixedLocator([t for t in nice if lo * 0.9 <= t <= hi * 1.1]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("latency per request, batch 1 (ms, log scale)")
    ax.set_ylabel("fraction of requests at or below")
    ax.set_ylim(0, 1.02)
    ax.axhline(0.5, color="grey", linewidth=0.6, linestyle=":")
    ax.axhline(0.99, color="grey", linewidth=0.6, linestyle=":")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="lower right")
    n = len(next(iter(samples.values())))
    ax.set_title(
        f"MiniLM (seq {d.get('seq', 128)}), batch 1, {n} sequential requests each (last round)",
        fontsize=10,
    )
    return {
        "file": _save(fig, out_dir, "serve_latency.png"),
        "title": "Serving latency: onnxship serve vs raw session.run",
        "caption": "Cumulative distribution of batch-1 request latency in the last round of "
        "serve_bench.py: the black line is ONNX Runtime called in-process (no network, no "
        "serialization), the floor any server adds to. Dotted lines mark p50 and p99.",
    }


def canary(d: dict[str, Any], out_dir: Path) -> Plot | None:
    tl = d.get("timeline")
    if not tl:
        return None
    t = np.array([x["t"] for x in tl])
    weight = np.array([x["canary_weight"] or 0 for x in tl], dtype=float)
    req = np.array([x["window_requests"] for x in tl], dtype=float)
    err = np.array([x["window_errors"] for x in tl], dtype=float)
    # error rate over a sliding second (4 samples of 0.25 s), as users saw it
    k = 4
    req_s = np.convolve(req, np.ones(k))[: req.size]  # trailing window: no peeking ahead
    err_s = np.convolve(err, np.ones(k))[: err.size]
    rate = np.divide(err_s, req_s, out=np.zeros_like(err_s), where=req_s > 0) * 100
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.step(
        t,
        weight,
        where="post",
        color="tab:blue",
        linewidth=2,
        label="canary weight (% of requests to v3)",
    )
    ax.set_xlabel("seconds since `onnxship apply` of v3 (broken export)")
    ax.set_ylabel("canary weight (%)", color="tab:blue")
    ax.set_ylim(-2, 102)
    ax2 = ax.twinx()
    ax2.plot(
        t, rate, color="tab:red", linewidth=1.4, label="error rate seen by users (%, 1 s window)"
    )
    ax2.set_ylabel("error rate seen by users (%)", color="tab:red")
    ax2.set_ylim(-1, max(10.0, float(rate.max()) * 1.15))
    aborted = [x["t"] for x in tl if x["aborted"]]
    if aborted:
        ax.axvline(aborted[0], color="black", linestyle="--", linewidth=1)
        ax.annotate(
            "analysis fails:\nrolled back",
            (aborted[0], 85),
            xytext=(-6, 0),
            textcoords="offset points",
            fontsize=8,
            ha="right",
        )
    started = [x["t"] for x in tl if x["canary_weight"]]
    if started:
        ax.annotate(
            "compressed, checked, served:\ncanary starts",
            (started[0], 21),
            xytext=(25, 45),
            textcoords="offset points",
            fontsize=8,
            arrowprops={"arrowstyle": "->", "linewidth": 0.8},
        )
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper left")
    ax.grid(True, alpha=0.25)
    ax.set_title(
        "Local mode: a broken v3's canary (setWeight 20, pause 6 s, setWeight 50, "
        "...) under 20 req/s",
        fontsize=10,
    )
    return {
        "file": _save(fig, out_dir, "canary.png"),
        "title": "Canary weight and error rate over time (local mode)",
        "caption": "rollout_bench.py --timeline: `onnxship up` serves v2, the load generator "
        "sends 20 req/s through the router, and the broken v3 is applied. Its padded requests "
        "fail (HTTP 500); the builtin analysis sees the canary's error rate pass maxErrorRate "
        "and sets the weight back to 0. Errors are what users saw, in 1-second windows.",
    }


def compression(d: dict[str, Any], out_dir: Path) -> Plot | None:
    m = d.get("minilm")
    if not m:
        return None
    fp32 = m["fp32"]
    order = [k for k in m if k not in ("head-to-head", "fp32")]
    short = {
        "anchor quantize_dynamic()": "anchor",
        "ours-default": "ours\n(default)",
        "dynamic-per-tensor": "dynamic\nper-tensor",
        "static-int8": "static\nint8",
        "optimize-only": "optimize\nonly",
    }
    names = [short.get(k, k) for k in order]
    colors = [
        "tab:grey"
        if k.startswith("anchor")
        else ("tab:green" if k == "ours-default" else "tab:blue")
        for k in order
    ]
    size = [m[k]["bytes"] / 1e6 for k in order]
    speed = [
        float(np.median([f / x for f, x in zip(fp32["b32"], m[k]["b32"], strict=True)]))
        for k in order
    ]
    lo = [
        float(np.min([f / x for f, x in zip(fp32["b32"], m[k]["b32"], strict=True)])) for k in order
    ]
    hi = [
        float(np.max([f / x for f, x in zip(fp32["b32"], m[k]["b32"], strict=True)])) for k in order
    ]
    cmean = [m[k]["cos_mean"] for k in order]
    cmin = [m[k]["cos_min"] for k in order]
    x = np.arange(len(order))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    ax = axes[0]
    ax.bar(x, size, color=colors)
    ax.axhline(
        fp32["bytes"] / 1e6,
        color="black",
        linestyle="--",
        linewidth=1,
        label=f"fp32: {fp32['bytes'] / 1e6:.0f} MB",
    )
    for i, v in enumerate(size):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("model size on disk (MB)")
    ax.set_title("size (lower is better)", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.bar(x, speed, color=colors, yerr=[np.array(speed) - lo, np.array(hi) - speed], capsize=3)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="fp32 = 1")
    ax.set_ylabel("batch-32 speedup vs fp32 (x)")
    ax.set_title("speed (higher is better; bars: min-max of rounds)", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[2]
    ax.bar(x - 0.18, cmean, width=0.36, color=colors, label="mean")
    ax.bar(x + 0.18, cmin, width=0.36, color=colors, alpha=0.45, hatch="//", label="min")
    low = min(min(cmin), 0.99) - 0.005
    ax.set_ylim(max(0.0, low), 1.0005)
    ax.set_ylabel("cosine similarity to fp32 embeddings")
    ax.set_title("accuracy (higher is better)", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    for a in axes:
        a.set_xticks(x, names, fontsize=7)
        a.grid(True, axis="y", alpha=0.25)
    fig.suptitle(
        "Compression modes on all-MiniLM-L6-v2 (green: onnxship default; grey: the "
        "anchor, quantize_dynamic() with defaults)",
        fontsize=11,
    )
    return {
        "file": _save(fig, out_dir, "compression.png"),
        "title": "Compression: size, speed and accuracy per mode",
        "caption": "compress_bench.py on ../shared/models/minilm: every mode of onnxship's "
        "pipeline and the anchor, each measured in the same rounds (variants interleaved). "
        "Speedup is fp32 latency / variant latency at batch 32 within a round; accuracy is "
        "the cosine of the sentence embeddings against fp32 over the sample sentences.",
    }


def cold_start(d: dict[str, Any], out_dir: Path) -> Plot | None:
    sizes = d.get("sizes")
    if not sizes:
        return None
    tags = list(sizes)
    x = np.arange(len(tags))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    top = 0.0
    for off, key, label, color in (
        (-0.2, "ours_s", "onnxship serve --store (fetch, verify, load, warm up)", "tab:green"),
        (0.2, "anchor_s", "boto3 download_file + InferenceSession", "tab:grey"),
    ):
        vals = [sizes[t][key] for t in tags]
        medv = np.array([np.median(v) for v in vals])
        lo = medv - np.array([min(v) for v in vals])
        hi = np.array([max(v) for v in vals]) - medv
        ax.bar(x + off, medv, width=0.38, color=color, yerr=[lo, hi], capsize=4, label=label)
        for i, v in enumerate(medv):
            ax.annotate(
                f"{v:.1f} s",
                (x[i] + off, max(vals[i])),  # above the error bar
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=9,
            )
        top = max(top, float(max(max(v) for v in vals)))
    ax.set_xticks(x, [f"{sizes[t]['bytes'] / 1e6:.0f} MB model" for t in tags])
    ax.set_ylim(0, top * 1.35)  # room for the legend above the bars
    ax.set_ylabel("seconds from process start to ready (median)")
    ax.set_title("Cold start from S3 (moto on 127.0.0.1); bars: min-max of rounds", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, axis="y", alpha=0.25)
    return {
        "file": _save(fig, out_dir, "cold_start.png"),
        "title": "Cold start: artifact in the store to a ready server",
        "caption": "cold_start_bench.py: a fresh `onnxship serve --store s3://... --cache-key` "
        "until /v2/health/ready answers, against a fresh Python that downloads the same files "
        "with boto3 and opens an InferenceSession (and runs it once). Synthetic MatMul "
        "models with external data, built with onnx.helper.",
    }


def scaling(d: dict[str, Any], out_dir: Path) -> Plot | None:
    settings = d.get("settings")
    if not settings:
        return None
    models = list(dict.fromkeys(st["model"] for st in settings))
    per_cpu = all("server_cpu_share" in st for st in settings)
    rows = 2 if per_cpu else 1
    fig, axes = plt.subplots(rows, len(models), figsize=(5.2 * len(models), 4.2 * rows + 1.2),
                             squeeze=False)  # fmt: skip
    lines = {
        "raw": ("raw session.run, N processes (ceiling)", {"color": "black", "linewidth": 2.5}),
        "ours/json": ("ours --workers N, JSON", {"color": "tab:green"}),
        "ours/binary": ("ours --workers N, binary", {"color": "tab:green", "linestyle": "--"}),
        "ours/grpc": ("ours --workers N, gRPC", {"color": "tab:green", "linestyle": ":"}),
        "ours_before/json": ("before: --instances N, JSON", {"color": "tab:olive"}),
        "ours_before/binary": ("before, binary", {"color": "tab:olive", "linestyle": "--"}),
        "ours_before/grpc": ("before, gRPC", {"color": "tab:olive", "linestyle": ":"}),
        "fastapi/json": ("FastAPI+uvicorn, N workers, JSON", {"color": "tab:blue"}),
        "kserve/json": ("KServe, --workers N, JSON", {"color": "tab:purple"}),
    }
    def value(st: dict[str, Any], key: str, row: int) -> float | None:
        if row == 0:
            return st["raw_rows_per_s"] if key == "raw" else st["rps"].get(key)
        # per CPU-second the processes got: what a shared machine's other tenants do not move
        if key == "raw":
            return st["raw_rows_per_s"] / max(1e-9, st["raw_cpu_share"] * st["n"])
        if key not in st["rps"]:
            return None
        return st["rps"][key] / max(1e-9, st["server_cpu_share"][key] * st["n"])

    for row, ax, model in ((r, axes[r][i], m) for r in range(rows) for i, m in enumerate(models)):
        sts = sorted((st for st in settings if st["model"] == model), key=lambda st: st["n"])
        ns = [st["n"] for st in sts]
        for key, (label, style) in lines.items():
            ys = [value(st, key, row) for st in sts]
            if any(y is None for y in ys):
                continue
            ax.plot(ns, ys, marker="o", label=label, **style)
            # hollow markers: the load generator shared the server's cores there
            for n, y, st in zip(ns, ys, sts, strict=True):
                if st["loadgen_shares_server_cores"]:
                    ax.plot([n], [y], marker="o", color="white", markersize=4)
        ax.set_yscale("log")
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("server cores N (pinned)")
        ax.set_ylabel("per CPU-second of the server (raw: its processes)" if row
                      else "requests (rows) per second, log scale", fontsize=8)  # fmt: skip
        ax.set_title(sts[0]["title"] + ", batch 1" + (": per CPU-second" if row else ""),
                     fontsize=10)  # fmt: skip
        ax.grid(True, which="both", alpha=0.25)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=3)
    fig.tight_layout(rect=(0, 0.12 / rows, 1, 1))  # room for the legend below the plots
    fig.savefig(out_dir / "scaling.png", dpi=110)
    plt.close(fig)
    return {
        "file": "scaling.png",
        "title": "Scaling with cores: onnxship serve vs raw ONNX Runtime and the peers",
        "caption": f"scaling_bench.py on {d.get('cpus')} CPUs, {d.get('connections')} connections "
        "in a closed loop from bench/loadgen.py on the cores the server does not have (a white "
        "dot: none were left, the load generator shared the server's cores). The black line is "
        "N single-threaded processes calling session.run on the same N cores: the ceiling. "
        "Lower row (where recorded): the same per CPU-second the server's processes (raw's) "
        "got in the window, the figure a shared machine's other tenants do not move.",
    }


def llm_ramp(d: dict[str, Any], out_dir: Path) -> Plot | None:
    variants = d.get("variants") or {}
    if not variants:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for (name, v), color in zip(variants.items(), ("tab:blue", "tab:orange", "tab:green"),
                                strict=False):  # fmt: skip
        last = v["rounds"][-1]
        ramp = last["ours"]["ramp"]
        xs = sorted(int(k) for k in ramp)
        a1.plot(xs, [ramp[str(x)]["tps"] for x in xs], marker="o", color=color,
                label=f"ours, {name}")  # fmt: skip
        a1.axhline(last["genai"]["static8_tps"], ls="--", lw=0.9, color=color,
                   label=f"GenAI static batch 8, {name}")  # fmt: skip
        a2.plot(xs, [ramp[str(x)]["ttft_p99_s"] for x in xs], marker="o", color=color,
                label=f"ours, {name}")  # fmt: skip
        a2.axhline(last["genai"]["engine8_ttft_p99_s"], ls="--", lw=0.9, color=color,
                   label=f"og.Engine at 8 streams, {name}")  # fmt: skip
    for a in (a1, a2):
        a.set_xscale("log", base=2)
        a.xaxis.set_major_locator(FixedLocator(xs))
        a.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        a.xaxis.set_minor_locator(NullLocator())
        a.set_xlabel("concurrent streams")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    a1.set(ylabel="aggregate generated tokens/s", title="throughput")
    a2.set_yscale("log")
    a2.set(ylabel="time to first token, p99 (s, log scale)", title="TTFT p99")
    a2.axhline(1.0, color="grey", ls=":", lw=0.8)
    fig.suptitle("onnxship serve, SmolLM2-135M: a ramp of concurrent streams")
    return {
        "file": _save(fig, out_dir, "llm_serve.png"),
        "title": "LLM serving: tokens/s and TTFT p99 as concurrent streams grow",
        "caption": f"llm_serve_bench.py, {d.get('tokens', 48)} generated tokens a stream, "
        "streamed over HTTP with the openai-shaped API, the last round of each variant. Dashed: "
        "the in-process anchors of the same run (GenAI's static batch of 8; og.Engine given 8 "
        "requests at once). Dotted: the issue's TTFT goal of 1 s at 8 streams.",
    }


PLOTS: dict[str, Callable[[dict[str, Any], Path], Plot | None]] = {
    "compress": compression,
    "serve": serve_latency,
    "cold_start": cold_start,
    "rollout": canary,
    "scaling": scaling,
    "llm_serve": llm_ramp,
}


def make_all(raw: dict[str, Any], out_dir: Path) -> list[Plot]:
    made = []
    for name, draw in PLOTS.items():
        data = raw.get(name)
        if not data:
            continue
        try:
            plot = draw(data, out_dir)
        except (KeyError, TypeError, ValueError) as exc:
            print(f"plot {name} failed: {exc!r}", flush=True)
            continue
        if plot:
            made.append(plot)
    return made


def main() -> None:
    out = Path(__file__).resolve().parent / "results"
    raw = {}
    for name in PLOTS:
        path = out / "raw" / f"{name}.json"
        if path.exists():
            raw[name] = json.loads(path.read_text())
    for p in make_all(raw, out):
        print(out / p["file"])


if __name__ == "__main__":
    main()
