"""The operator at N ModelDeployments on the real API server (issue 21), against an anchor.

On the e2e control plane (kube-apiserver, etcd, kube-controller-manager from .cache/e2e/bin;
KWOK plays the node, so Pods turn Ready without running) with the API server's audit log on,
and moto's S3 on 127.0.0.1 holding every artifact beforehand (so no compression Job runs):
N ModelDeployments applied at once, then the operator started; all Ready; a rest window; a
model change on K of them (a canary each, setWeight steps without pauses); the operator
restarted at rest; all deleted. The same for the anchor, a minimal kopf operator that only
writes status, on the same objects in a namespace of its own, in the same run (anchor first).
The flow and what is counted how: e2e/harness/scale.py.

    make bench-scale                                    # 1,000 objects, 100 canaries
    make bench-scale SCALE_ARGS="--count 50"            # a quick one (a few minutes)
    nice -n 10 .venv/bin/python bench/scale_bench.py --count 200 --cases onnxship

Writes bench/results/raw/scale.json (--output) and prints a summary. Needs the e2e binaries
(e2e/build.sh, or make e2e once).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # e2e.harness, tests.helpers; onnxship from the venv

from e2e.harness.api import wait_for  # noqa: E402
from e2e.harness.control_plane import (  # noqa: E402
    BIN,
    CONTROLLERS,
    binary_version,
    kwok_available,
    missing_binaries,
    start_control_plane,
    start_kwok,
)
from e2e.harness.install import install_crd  # noqa: E402
from e2e.harness.kubelet import KWOK_ANNOTATION, NODE, FakeKubelet  # noqa: E402
from e2e.harness.scale import (  # noqa: E402
    AuditTail,
    Options,
    ScaleRun,
    audit_args,
    prepare_store,
    ratios,
)

OUTPUT = ROOT / "bench" / "results" / "raw" / "scale.json"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--count", type=int, default=1000, help="ModelDeployments (default 1000)")
    p.add_argument(
        "--canaries", type=int, default=0, help="spec changes (default: 100, at most count/10)"
    )
    p.add_argument(
        "--rest-seconds", type=float, default=0, help="rest window (default: the resync period)"
    )
    p.add_argument(
        "--resync-seconds", type=float, default=60.0, help="the operator's (60: its default)"
    )
    p.add_argument("--cases", nargs="+", default=["anchor", "onnxship"])
    p.add_argument("--output", type=Path, default=OUTPUT)
    p.add_argument("--keep", action="store_true", help="keep the audit log folder")
    args = p.parse_args()

    missing = missing_binaries()
    if missing or not kwok_available():
        print(f"e2e binaries missing in {BIN}: {missing or ['kwok']}; run e2e/build.sh")
        return 2
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    canaries = args.canaries or min(100, max(1, args.count // 10))
    options = Options(
        count=args.count,
        canaries=canaries,
        rest_seconds=args.rest_seconds or args.resync_seconds,
        resync_seconds=args.resync_seconds,
        cases=tuple(args.cases),
    )
    scratch = Path(tempfile.mkdtemp(prefix="scale-", dir=ROOT / ".cache"))
    started = time.time()
    print(f"scale bench: {args.count} objects, {canaries} canaries, folder {scratch}")

    from moto.server import ThreadedMotoServer

    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    host, port = s3.get_host_and_port()
    cp = start_control_plane(CONTROLLERS, audit_args(scratch))
    audit = AuditTail(scratch / "audit.log")
    kubelet: FakeKubelet | None = None
    try:
        t = time.time()
        store = prepare_store(f"http://{host}:{port}", scratch / "models")
        print(f"store ready in {time.time() - t:.0f}s: v1 {store.v1.cache_key[:12]}, "
              f"v2 {store.v2.cache_key[:12]}")
        crd = install_crd(cp.admin)
        assert crd.ok, crd.message
        start_kwok(cp, KWOK_ANNOTATION)
        kubelet = FakeKubelet(cp.admin, kwok=True)  # the Node; Pods are bound by the run
        kubelet.start()
        wait_for(
            lambda: any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in (cp.admin.get(f"/api/v1/nodes/{NODE}") or {})
                .get("status", {})
                .get("conditions", [])
            ),
            timeout=60,
            what="KWOK to make the node Ready",
        )
        run = ScaleRun(cp, audit, store, NODE, options, say=lambda m: print(m, flush=True))
        cases = run.run()
    finally:
        audit.stop()
        if kubelet is not None:
            kubelet.stop()
        cp.stop()
        s3.stop()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    result: dict[str, Any] = {
        "bench": "scale",
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_seconds": round(time.time() - started, 1),
        "cpus": os.cpu_count(),
        "options": {
            "count": options.count,
            "canaries": options.canaries,
            "steps": "setWeight 25, 50, 75 (no pauses)",
            "rest_seconds": options.rest_seconds,
            "resync_seconds": options.resync_seconds,
            "replicas": 1,
        },
        "versions": {
            c: binary_version(c).rsplit("@", 1)[-1]
            for c in ("kube-apiserver", "kube-controller-manager", "etcd", "kwok")
        },
        "counted": "operator requests: the API server's audit log filtered by the operator's "
        "ServiceAccount user (kopf's own requests included; KWOK, controller-manager and "
        "harness excluded); apiserver rate: apiserver_request_total deltas (all clients); "
        "process: /proc VmHWM, utime+stime, threads, established TCP connections (1 s samples)",
        "cases": cases,
    }
    if "anchor" in cases and "onnxship" in cases:
        result["ratios_onnxship_over_anchor"] = ratios(cases["anchor"], cases["onnxship"])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary(result), indent=2))
    print(f"written to {args.output}")
    return 0


def summary(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, c in result["cases"].items():
        out[name] = {
            "seconds_to_all_ready": c["seconds_to_all_ready"],
            "canaries_seconds": c["canary"]["seconds_to_all_done"],
            "canaries_with_every_step": c["canary"].get("canaries_with_every_step_written"),
            "rest_req_per_s": c["rest"]["operator_requests_per_second"],
            "rest_req_per_object_per_pass": c["rest"].get("requests_per_object_per_pass"),
            "apiserver_req_per_s_at_rest": c["rest"]["apiserver_requests_per_second_all_clients"],
            "restart_seconds_back_to_rest": c["restart"]["seconds_back_to_rest"],
            "restart_writes": c["restart"]["writes"],
            "delete_seconds": c["delete"]["seconds_to_all_gone"],
            "peak_rss_mb": c["process"]["peak_rss_mb"],
            "cpu_seconds": c["process"]["cpu_seconds"],
            "threads_max": c["process"]["threads_max"],
            "connections_max": c["process"]["connections_max"],
        }
    if "ratios_onnxship_over_anchor" in result:
        out["ratios"] = result["ratios_onnxship_over_anchor"]
    return out


if __name__ == "__main__":
    sys.exit(main())
