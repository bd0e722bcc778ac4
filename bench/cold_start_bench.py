#!/usr/bin/env python
"""Cold start: from a revision's artifact in the store to a server that answers ready.

A script, not a test. For synthetic models of about ``--sizes-mb`` (default 100 and 1000 MB,
built with onnx.helper: a stack of MatMul+Relu layers, weights in one external-data file) it
publishes each model as an onnxship artifact into a real S3 server (moto's ``moto_server`` in
its own process on 127.0.0.1), then times, in fresh processes and interleaved rounds:

- ours: ``onnxship serve --store s3://... --cache-key K`` from process start until
  ``GET /v2/health/ready`` answers 200 (fetch + sha256 verification + session + warm-up);
- the anchor: a fresh ``python`` that imports boto3 and onnxruntime, calls
  ``download_file`` for the model and its data file, builds an ``InferenceSession`` and runs it
  once (what a hand-written init container plus server would do, without verification).

Ratios are ours / anchor within a round; the report gives the median and the min-max spread.

    .venv/bin/python bench/cold_start_bench.py [--sizes-mb 100 1000] [--rounds 3]
        [--out-json bench/results/cold_start.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

BIN = Path(sys.executable).parent
BUCKET = "coldstart"
CREDS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}
DIM = 2048  # one layer = 16 MiB of fp32 weights

ANCHOR = r"""
import sys, time
t0 = time.perf_counter()
import boto3, numpy as np, onnxruntime as ort
endpoint, bucket, prefix, dest = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
for name in ("model.onnx", "weights.bin"):
    s3.download_file(bucket, prefix + name, f"{dest}/{name}")
so = ort.SessionOptions(); so.log_severity_level = 3
sess = ort.InferenceSession(f"{dest}/model.onnx", so, providers=["CPUExecutionProvider"])
x = sess.get_inputs()[0]
sess.run(None, {x.name: np.zeros((1, x.shape[1]), np.float32)})
print(time.perf_counter() - t0)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_model(folder: Path, megabytes: float) -> int:
    """A stack of DIM x DIM MatMul+Relu layers; weights written layer by layer to weights.bin."""
    import onnx
    from onnx import TensorProto, helper

    layer_bytes = DIM * DIM * 4
    layers = max(1, round(megabytes * 1e6 / layer_bytes))
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    with (folder / "weights.bin").open("wb") as f:
        for i in range(layers):
            w = (rng.standard_normal((DIM, DIM), dtype=np.float32) / np.sqrt(DIM)).astype(
                np.float32
            )
            offset = f.tell()
            w.tofile(f)
            t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[DIM, DIM])
            t.data_location = TensorProto.EXTERNAL
            for k, v in (
                ("location", "weights.bin"),
                ("offset", str(offset)),
                ("length", str(layer_bytes)),
            ):
                e = t.external_data.add()
                e.key, e.value = k, v
            inits.append(t)
            src = "x" if i == 0 else f"h{i - 1}"
            last = i == layers - 1
            nodes.append(helper.make_node("MatMul", [src, f"w{i}"], [f"m{i}"]))
            nodes.append(
                helper.make_node(
                    "Identity" if last else "Relu", [f"m{i}"], ["y" if last else f"h{i}"]
                )
            )
    graph = helper.make_graph(
        nodes,
        "coldstart",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", DIM])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", DIM])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(folder / "model.onnx"))
    return layers


def publish(store_uri: str, endpoint: str, folder: Path, tag: str) -> str:
    """The model as an onnxship artifact (no compression: the bytes a revision would fetch)."""
    from onnxship.api import ArtifactManifest, Compression, CompressionReport, SourceInfo
    from onnxship.api.manifest import ToolVersions
    from onnxship.store import describe, open_store

    blobs = describe(folder, ["model.onnx", "weights.bin"])
    size = sum(b.size for b in blobs)
    manifest = ArtifactManifest(
        cache_key=hashlib.sha256(f"coldstart-{tag}-{blobs[0].digest}".encode()).hexdigest()[:32],
        source=SourceInfo(uri=folder.as_uri(), sha256=blobs[0].digest, size_bytes=size),
        compression=Compression.model_validate({"optimize": "none", "quantize": {"mode": "none"}}),
        blobs=blobs,
        report=CompressionReport(original_bytes=size, compressed_bytes=size, ratio=1.0),
        tools=ToolVersions(onnxship="bench", onnx="bench", onnxruntime="bench"),
        created_at="2026-01-01T00:00:00Z",
    )
    open_store(store_uri, endpoint=endpoint).publish(manifest, folder)
    return manifest.cache_key


def upload_plain(endpoint: str, folder: Path, prefix: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for name in ("model.onnx", "weights.bin"):
        s3.upload_file(str(folder / name), BUCKET, prefix + name)


def time_ours(store_uri: str, endpoint: str, key: str, cache: Path, log: Path) -> float:
    port = free_port()
    cmd = [
        str(BIN / "onnxship"),
        "--log-format",
        "json",
        "serve",
        "--store",
        store_uri,
        "--cache-key",
        key,
        "--store-endpoint",
        endpoint,
        "--cache-dir",
        str(cache),
        "--http-port",
        str(port),
        "--grpc-port",
        "-1",
        "--threads",
        "2",
    ]
    url = f"http://127.0.0.1:{port}/v2/health/ready"
    t0 = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                pass
            if time.perf_counter() - t0 > 900:
                raise TimeoutError(url)
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def time_anchor(endpoint: str, prefix: str, dest: Path) -> float:
    dest.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", ANCHOR, endpoint, BUCKET, prefix, str(dest)],
        check=True,
        capture_output=True,
        text=True,
    )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes-mb", type=float, nargs="+", default=[100, 1000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--out-json", type=Path)
    args = ap.parse_args()
    os.environ.update(CREDS)

    tmp = Path(tempfile.mkdtemp(prefix="coldstart-bench-", dir=args.work_dir))
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "rounds": args.rounds,
        "sizes": {},
    }
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket=BUCKET
        )
        store_uri = f"s3://{BUCKET}/artifacts/"
        cases = []
        for mb in args.sizes_mb:
            tag = f"{mb:g}mb"
            folder = tmp / "models" / tag
            t = time.perf_counter()
            layers = build_model(folder, mb)
            size = sum(p.stat().st_size for p in folder.iterdir())
            key = publish(store_uri, endpoint, folder, tag)
            upload_plain(endpoint, folder, f"plain/{tag}/")
            shutil.rmtree(folder)  # the store holds it now; keep the disk free
            print(
                f"{tag}: {layers} layers, {size / 1e6:.0f} MB, built and stored in "
                f"{time.perf_counter() - t:.0f}s",
                flush=True,
            )
            cases.append((tag, key, size))
            results["sizes"][tag] = {
                "bytes": size,
                "layers": layers,
                "ours_s": [],
                "anchor_s": [],
                "ratio": [],
            }
        for r in range(args.rounds):
            for tag, key, _ in cases:
                res = results["sizes"][tag]
                # alternate which goes first, so drift on a shared machine hits both alike
                order = ("ours", "anchor") if r % 2 == 0 else ("anchor", "ours")
                got: dict[str, float] = {}
                for who in order:
                    where = tmp / f"{who}-{tag}-{r}"
                    if who == "ours":
                        got[who] = time_ours(store_uri, endpoint, key, where, tmp / "serve.log")
                    else:
                        got[who] = time_anchor(endpoint, f"plain/{tag}/", where)
                    shutil.rmtree(where, ignore_errors=True)
                res["ours_s"].append(got["ours"])
                res["anchor_s"].append(got["anchor"])
                res["ratio"].append(got["ours"] / got["anchor"])
                print(
                    f"round {r + 1} {tag}: ours {got['ours']:.2f}s, anchor "
                    f"{got['anchor']:.2f}s, ratio {res['ratio'][-1]:.2f}",
                    flush=True,
                )
    finally:
        moto.terminate()
        moto.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    results["loadavg_end"] = os.getloadavg()
    print("\n| model | MB | ours s (median) | anchor s (median) | ours/anchor | spread |")
    print("|---|---:|---:|---:|---:|---|")
    for tag, res in results["sizes"].items():
        res["median_ratio"] = statistics.median(res["ratio"])
        print(
            f"| {tag} | {res['bytes'] / 1e6:.0f} | {statistics.median(res['ours_s']):.2f} | "
            f"{statistics.median(res['anchor_s']):.2f} | {res['median_ratio']:.2f} | "
            f"{min(res['ratio']):.2f}-{max(res['ratio']):.2f} |"
        )
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
