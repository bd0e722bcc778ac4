"""`onnxship operator`, the operator image's entry point, as a process with a kubeconfig."""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

from .conftest import Cluster
from .test_kubectl_plugin import kubeconfig
from .test_lifecycle import JOBS, md


async def test_operator_process_logs_in_and_reconciles(
    cluster: Cluster, tmp_path: Path, free_port: Any
) -> None:
    metrics_port, liveness_port = free_port(), free_port()
    env = {
        **os.environ,
        "KUBECONFIG": kubeconfig(tmp_path, str(cluster.server.url)),
        "ONNXSHIP_STORE_URI": "s3://artifacts/team/",
        "ONNXSHIP_RUNTIME_IMAGE": "registry.example/onnxship/runtime:test",
    }
    onnxship = str(Path(sys.executable).with_name("onnxship"))
    proc = await asyncio.create_subprocess_exec(
        onnxship,
        "--log-format",
        "json",
        "operator",
        "-A",
        "--metrics-port",
        str(metrics_port),
        "--liveness-port",
        str(liveness_port),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await cluster.apply(md())
        jobs = await cluster.wait_for(lambda: cluster.objects(JOBS), timeout=30, what="a Job")
        [job] = jobs.values()
        [container] = job["spec"]["template"]["spec"]["containers"]
        assert container["image"] == "registry.example/onnxship/runtime:test", "settings from env"

        def fetch(url: str) -> str:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return str(resp.read().decode())

        health = await asyncio.to_thread(fetch, f"http://127.0.0.1:{liveness_port}/healthz")
        assert health  # kopf's liveness endpoint answers 200 with its probe results
        metrics = ""
        for _ in range(100):  # the pass that created the Job may still be writing status
            metrics = await asyncio.to_thread(fetch, f"http://127.0.0.1:{metrics_port}/metrics")
            if 'onnxship_operator_reconciles_total{result="ok"}' in metrics:
                break
            await asyncio.sleep(0.1)
        assert 'onnxship_operator_reconciles_total{result="ok"}' in metrics
        assert 'onnxship_operator_api_requests_total{kind="Job",verb="create"} 1.0' in metrics
        assert (
            'onnxship_modeldeployment_phase{name="enc",namespace="default",phase="Compressing"} 1.0'
            in metrics
        )
    finally:
        proc.terminate()
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=20)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert b'"level": "error"' not in stderr, stderr.decode()[-2000:]
