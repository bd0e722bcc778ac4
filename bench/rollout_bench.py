#!/usr/bin/env python
"""Rollout in local mode: from `onnxship apply` of a new version to 100% of the traffic.

A script, not a test. With the demo encoder (examples/demo/build_model.py, built into a
temporary folder) it runs `onnxship up` of v1 in a fresh state folder, sends steady traffic
through the router (the demo's load generator) and then, per round:

- applies v2 with a 3-step canary of zero pause (setWeight 25, 50, 75, each followed by
  ``pause: 0s``) and times until v2 is stable and Ready (100% of the traffic);
- the anchor, in the same round: the sum of its parts measured on their own in fresh
  processes: ``onnxship compress`` of the same v2 with the same settings into an empty store,
  plus ``onnxship serve`` of the result until ``/v2/health/ready`` (the steps themselves
  have zero pause, so they add nothing to the anchor).

Each round starts from a fresh state folder (so v2 is really compressed, never a cache hit).
After the last round, ``--timeline`` applies the broken v3 with a slow canary (setWeight 20,
pause, setWeight 50, pause) and records the canary weight, the phase and the error rate the
users see every 0.25 s until the analysis rolls it back: the data of the canary plot.

    .venv/bin/python bench/rollout_bench.py [--rounds 2] [--timeline] [--out-json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo"
NAME = "encoder"


def spec(models: Path, version: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "onnxship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME},
        "spec": {
            "model": {
                "uri": (models / version / "model.onnx").as_uri(),
                "version": version,
                "sampleInputs": (models / "samples.npz").as_uri(),
            },
            "compression": {
                "optimize": "extended",
                "quantize": {"mode": "dynamic", "weightType": "int8", "perChannel": True},
                "accuracyGate": {"metric": "cosine", "min": 0.99},
            },
            "serving": {"batching": {"maxBatchSize": 16, "maxDelayMs": 2}},
            "rollout": {
                "steps": steps,
                "analysis": {
                    "interval": "1s",
                    "maxErrorRate": 0.05,
                    "failureLimit": 1,
                    "minRequests": 5,
                },
                "progressDeadline": "5m",
            },
        },
    }


ZERO_PAUSE = [
    {"setWeight": 25},
    {"pause": {"duration": "0s"}},
    {"setWeight": 50},
    {"pause": {"duration": "0s"}},
    {"setWeight": 75},
    {"pause": {"duration": "0s"}},
]
SLOW = [
    {"setWeight": 20},
    {"pause": {"duration": "6s"}},
    {"setWeight": 50},
    {"pause": {"duration": "6s"}},
]


def cli(*args: str) -> str:
    from onnxship.local.processes import onnxship_command

    out = subprocess.run(
        [*onnxship_command(), *args], capture_output=True, text=True, timeout=600, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"onnxship {' '.join(args)}: {out.stderr[-2000:]}")
    return out.stdout


class Up:
    """`onnxship up` of v1 in a fresh state folder, with load through its router."""

    def __init__(self, work: Path, v1: Path) -> None:
        from onnxship.local.loadgen import LoadGenerator, infer_url
        from onnxship.local.processes import free_port, onnxship_command
        from onnxship.local.state import DeploymentState

        self.state_dir = work / "state"
        self.state = DeploymentState(self.state_dir, NAME)
        self.t0, self.last = 0.0, (0, 0)
        port = free_port()
        self.log = (work / "up.log").open("wb")
        self.proc = subprocess.Popen(
            [
                *onnxship_command(),
                "up",
                str(v1),
                "--port",
                str(port),
                "--ui",
                "plain",
                "--serve-threads",
                "1",
                "--no-watch",
                "--state-dir",
                str(self.state_dir),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ONNXSHIP_LOG_FORMAT": "text"},
        )
        self.wait(lambda s: s.phase == "Ready" and self.version(s, s.stable_revision) == "v1", 300)
        self.load = LoadGenerator(
            infer_url(f"http://127.0.0.1:{port}", NAME), rate=20, concurrency=4
        ).start()

    @staticmethod
    def version(status: Any, revision: str) -> str:
        return next((r.model_version for r in status.revisions if r.name == revision), "")

    def wait(self, check: Any, timeout: float, timeline: list | None = None) -> Any:
        """Poll the status until ``check`` holds; append a sample to ``timeline`` each time
        (its clock and request counts carry over between calls with the same list)."""
        deadline = time.monotonic() + timeout
        if timeline is not None and not timeline:
            self.t0 = time.perf_counter()
            self.last = (self.load.stats.sent, self.load.stats.ok)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"`onnxship up` exited with {self.proc.returncode}")
            status = self.state.read_status()
            if timeline is not None:
                stats = self.load.stats
                sent, ok = stats.sent, stats.ok
                window = (sent - self.last[0], ok - self.last[1])
                self.last = (sent, ok)
                timeline.append(
                    {
                        "t": round(time.perf_counter() - self.t0, 3),
                        "phase": status.phase if status else "",
                        "canary_weight": status.canary_weight if status else 0,
                        "aborted": bool(status.aborted) if status else False,
                        "window_requests": window[0],
                        "window_errors": window[0] - window[1],
                    }
                )
            if status is not None and check(status):
                return status
            time.sleep(0.25)
        raise TimeoutError(f"waited {timeout:.0f}s; status {self.state.read_status()}")

    def apply(self, doc: dict[str, Any], path: Path) -> None:
        path.write_text(yaml.safe_dump(doc))
        cli("apply", str(path), "--state-dir", str(self.state_dir))

    def stop(self) -> None:
        self.load.stop()
        pids = (self.state.read_runtime() or {}).get("pids", [])
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in pids:  # children `up` started, should any outlive it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.log.close()


def parts(work: Path, models: Path) -> dict[str, float]:
    """compress v2 alone (fresh store), then serve the result until ready."""
    from onnxship.local.processes import free_port, onnxship_command

    store = work / "parts-store"
    t0 = time.perf_counter()
    out = cli(
        "compress",
        (models / "v2" / "model.onnx").as_uri(),
        "--store",
        store.as_uri(),
        "--samples",
        (models / "samples.npz").as_uri(),
        "--optimize",
        "extended",
        "--quantize",
        "dynamic",
        "--per-channel",
        "--gate-min",
        "0.99",
        "-o",
        "json",
        "--progress",
        "none",
    )
    compress_s = time.perf_counter() - t0
    key = json.loads(out)["cacheKey" if "cacheKey" in out else "cache_key"]
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [
            *onnxship_command(),
            "serve",
            "--store",
            store.as_uri(),
            "--cache-key",
            key,
            "--cache-dir",
            str(work / "parts-cache"),
            "--http-port",
            str(port),
            "--grpc-port",
            "-1",
            "--threads",
            "1",
            "--name",
            NAME,
            "--max-batch-size",
            "16",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited {proc.returncode}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/v2/health/ready", timeout=2
                ) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.05)
        start_s = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(30)
    return {"compress_s": compress_s, "start_s": start_s}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--timeline", action="store_true", help="then a broken v3's canary, recorded")
    ap.add_argument("--out-json", type=Path)
    args = ap.parse_args()
    sys.path.insert(0, str(DEMO))
    import build_model

    tmp = Path(tempfile.mkdtemp(prefix="rollout-bench-"))
    models = tmp / "models"
    build_model.build(models)
    results: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "steps": ZERO_PAUSE,
        "rounds": [],
    }
    try:
        for r in range(args.rounds):
            work = tmp / f"round{r}"
            work.mkdir()
            (work / "v1.yaml").write_text(yaml.safe_dump(spec(models, "v1", ZERO_PAUSE)))
            up = Up(work, work / "v1.yaml")
            try:
                time.sleep(1)
                t0 = time.perf_counter()
                up.apply(spec(models, "v2", ZERO_PAUSE), work / "v2.yaml")
                up.wait(
                    lambda s: s.phase == "Ready" and Up.version(s, s.stable_revision) == "v2", 300
                )
                rollout_s = time.perf_counter() - t0
                before = up.load.stats.copy()
                timeline: list[dict[str, Any]] = []
                if args.timeline and r == args.rounds - 1:
                    time.sleep(2)
                    up.apply(spec(models, "v3", SLOW), work / "v3.yaml")
                    up.wait(
                        lambda s: (
                            bool(s.aborted)
                            and Up.version(s, s.canary_revision) == "v3"
                            and s.canary_weight == 0
                        ),
                        300,
                        timeline,
                    )
                    for _ in range(16):  # a few seconds after the rollback
                        up.wait(lambda s: True, 5, timeline)
                        time.sleep(0.25)
                users = up.load.stats.copy()
            finally:
                up.stop()
            p = parts(work, models)
            anchor = p["compress_s"] + p["start_s"]
            row = {
                "apply_to_100_s": rollout_s,
                **p,
                "anchor_s": anchor,
                "ratio": rollout_s / anchor,
                "users_sent": users.sent,
                "users_errors_during_v2": before.errors,
            }
            results["rounds"].append(row)
            if timeline:
                results["timeline"] = timeline
            print(
                f"round {r + 1}: apply -> 100% {rollout_s:.1f}s; parts: compress "
                f"{p['compress_s']:.1f}s + start {p['start_s']:.1f}s = {anchor:.1f}s; "
                f"ratio {row['ratio']:.2f}",
                flush=True,
            )
            shutil.rmtree(work, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratios = [r["ratio"] for r in results["rounds"]]
    results["median_ratio"] = statistics.median(ratios)
    results["loadavg_end"] = os.getloadavg()
    print(
        f"apply -> 100% / (compress + start): median {results['median_ratio']:.2f} "
        f"(spread {min(ratios):.2f}-{max(ratios):.2f})"
    )
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
