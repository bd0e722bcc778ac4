"""1,000 ModelDeployments applied at once: how fast the operator creates their Jobs.

Anchor, in the same run: a minimal kopf operator that only writes status on create. Both run
as their own processes against one KMock server (kopf's Kubernetes mock) hosted by this
script, so that their peak memory (VmHWM) is theirs alone.

    .venv/bin/python bench/operator_bench.py [--count 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

ANCHOR = textwrap.dedent(
    """
    import kopf
    @kopf.on.startup()
    def configure(settings, **_):
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix='bench.io')
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix='bench.io')
    @kopf.on.create('onnxship.io', 'v1alpha1', 'modeldeployments')
    def seen(patch, **_):
        patch.status['phase'] = 'Seen'
    """
)


def post_json(url: str, body: dict[str, Any]) -> None:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    urllib.request.urlopen(req, timeout=120).read()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def kubeconfig(folder: Path, url: str) -> Path:
    path = folder / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "mock",
                "clusters": [{"name": "mock", "cluster": {"server": url}}],
                "users": [{"name": "u", "user": {"token": "bench"}}],
                "contexts": [{"name": "mock", "context": {"cluster": "mock", "user": "u"}}],
            }
        )
    )
    return path


class MockCluster:
    """KMock in a thread of this process: the operators talk to it over HTTP, and the
    bench counts objects in its memory (polling it over HTTP would load it as much)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.stop = asyncio.Event()
        self.emulator: Any = None
        self.url = ""
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        import kmock
        from kmock._internal import apps

        self.stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as k, apps.Server(k):
            k.resources.load_bundled()
            k.resources["onnxship.io/v1alpha1/modeldeployments"] = kmock.ResourceInfo(
                kind="ModelDeployment",
                namespaced=True,
                verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
            )
            self.emulator, self.url = k, str(k.url).rstrip("/")
            self.ready.set()
            await self.stop.wait()

    def count(self, plural: str, predicate: Any = None) -> int:
        n = 0
        for (res, _ns, _name), obj in list(self.emulator.objects.items()):
            if getattr(res, "plural", "") == plural and not obj.deleted:
                n += 1 if predicate is None or predicate(obj.raw) else 0
        return n

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


def md(i: int, ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "onnxship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {
            "name": f"m{i:04d}",
            "namespace": ns,
            "uid": f"{ns}-{i}",
            "resourceVersion": "1",
        },
        "spec": {"model": {"uri": f"s3://models/m{i}/model.onnx", "version": "v1"}},
    }


def run_case(
    name: str, command: list[str], count: int, done: Any, env: dict[str, str], metrics_port: int = 0
) -> dict[str, Any]:
    cluster = MockCluster()
    url = cluster.url
    folder = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    env = {**os.environ, **env, "KUBECONFIG": str(kubeconfig(folder, url))}
    ns = "bench"
    # "Applied at once": every object exists before the operator starts, as after a
    # `kubectl apply -f dir/` or an Argo CD sync; the clock starts with the operator.
    t = time.monotonic()
    path = f"{url}/apis/onnxship.io/v1alpha1/namespaces/{ns}/modeldeployments"
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: post_json(path, md(i, ns)), range(count)))
    posted = time.monotonic() - t
    t0 = time.monotonic()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            n = done(cluster)
            if n >= count:
                break
            if time.monotonic() - t0 > 1200:
                raise TimeoutError(f"{name}: {n}/{count} after 1200 s")
            time.sleep(0.5)
        elapsed = time.monotonic() - t0
        out: dict[str, Any] = {
            "case": name,
            "count": count,
            "seconds_to_all": round(elapsed, 2),
            "seconds_posting_before_start": round(posted, 2),
            "peak_rss_mb": round(peak_rss_mb(proc.pid), 1),
        }
        if metrics_port:
            text = (
                urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
            )
            api = sum(
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith("onnxship_operator_api_requests_total{")
            )
            passes = sum(
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith("onnxship_operator_reconciles_total{")
            )
            out["reconciles"] = int(passes)
            out["api_requests_per_reconcile"] = round(api / passes, 2) if passes else None
        return out
    finally:
        proc.terminate()
        proc.wait(30)
        cluster.close()


def jobs_done(cluster: MockCluster) -> int:
    return cluster.count("jobs")


def status_done(cluster: MockCluster) -> int:
    return cluster.count("modeldeployments", lambda o: bool((o.get("status") or {}).get("phase")))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "operator.json")
    args = parser.parse_args()

    anchor_file = Path(tempfile.mkdtemp()) / "anchor.py"
    anchor_file.write_text(ANCHOR)
    kopf = str(Path(PY).with_name("kopf"))
    anchor = run_case(
        "minimal kopf operator (status only)",
        [kopf, "run", str(anchor_file), "-A", "--standalone"],
        args.count,
        status_done,
        {},
    )
    onnxship = str(Path(PY).with_name("onnxship"))
    ours = run_case(
        "onnxship operator (Job per ModelDeployment)",
        [
            onnxship,
            "--log-format",
            "json",
            "--log-level",
            "WARNING",
            "operator",
            "-A",
            "--metrics-port",
            "19090",
            "--liveness-port",
            "18080",
        ],
        args.count,
        jobs_done,
        {"ONNXSHIP_STORE_URI": "s3://artifacts/bench/"},
        metrics_port=19090,
    )
    result = {
        "anchor": anchor,
        "ours": ours,
        "time_ratio": round(ours["seconds_to_all"] / anchor["seconds_to_all"], 2),
        "memory_ratio": round(ours["peak_rss_mb"] / anchor["peak_rss_mb"], 2),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
