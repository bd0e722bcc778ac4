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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # e2e.harness, tests.helpers; onnxship from the venv

from e2e.harness.control_plane import (  # noqa: E402
    BIN,
    CONTROLLERS,
    binary_version,
    kwok_available,
    missing_binaries,
    start_control_plane,
)
from e2e.harness.kubelet import NODE, FakeKubelet  # noqa: E402
from e2e.harness.scale import (  # noqa: E402
    CONTROLLER_MANAGER_ARGS,
    AuditTail,
    Options,
    ScaleRun,
    apiserver_args,
    kwok_node,
    prepare_store,
    ratios,
)

OUTPUT = ROOT / "bench" / "results" / "raw" / "scale.json"


def operator_code(scratch: Path, src: Path | None) -> dict[str, Any]:
    """Pin the operator's code for the run (PYTHONPATH of every process started from here)
    and say which it is: the commit, and the files of the tree that differ from it."""
    if src is None:
        src = scratch / "src"
        shutil.copytree(
            ROOT / "operator" / "onnxship",
            src / "onnxship",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        where = "this tree, copied at the start"
    else:
        src = src.resolve()
        where = str(src)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        x for x in (str(src), os.environ.get("PYTHONPATH", "")) if x
    )

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    return {
        "source": where,
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_operator_files": git("status", "--porcelain", "operator/onnxship").split(
            "\n"
        )
        if git("status", "--porcelain", "operator/onnxship")
        else [],
    }


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
    p.add_argument(
        "--cases",
        nargs="+",
        default=["anchor", "anchor-children", "onnxship"],
        choices=["anchor", "anchor-children", "onnxship"],
        help="anchor: kopf writing status only; anchor-children: kopf making one Deployment "
        "and Service per object, Ready once its Pod is (onnxship's critical path)",
    )
    p.add_argument("--output", type=Path, default=OUTPUT)
    p.add_argument(
        "--operator-src",
        type=Path,
        help="a folder holding the onnxship package to run as the operator (e.g. from "
        "`git archive <commit> operator`); default: a copy of operator/onnxship taken at the "
        "start, so that edits to the tree during a run do not reach the restarted operator",
    )
    p.add_argument("--keep", action="store_true", help="keep the audit log folder")
    p.add_argument(
        "--report",
        action="store_true",
        help="also write the section of bench/results/REPORT.md (make bench-scale does)",
    )
    p.add_argument(
        "--report-only", action="store_true", help="rewrite that section from --output's JSON"
    )
    args = p.parse_args()
    if args.report_only:
        write_report(json.loads(args.output.read_text()))
        return 0

    missing = missing_binaries()
    if missing or not kwok_available():
        print(f"e2e binaries missing in {BIN}: {missing or ['kwok']}; run e2e/build.sh")
        return 2
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("werkzeug", "urllib3"):  # a line per request; retries while it starts
        logging.getLogger(noisy).setLevel(logging.ERROR)
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
    code = operator_code(scratch, args.operator_src)
    print(f"scale bench: {args.count} objects, {canaries} canaries, folder {scratch}")

    from moto.server import ThreadedMotoServer

    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    host, port = s3.get_host_and_port()
    cp = start_control_plane(CONTROLLERS, apiserver_args(scratch), CONTROLLER_MANAGER_ARGS)
    audit = AuditTail(scratch / "audit.log")
    kubelet: FakeKubelet | None = None
    failure = ""
    cases: dict[str, Any] = {}
    try:
        t = time.time()
        store = prepare_store(f"http://{host}:{port}", scratch / "models")
        print(f"store ready in {time.time() - t:.0f}s: v1 {store.v1.cache_key[:12]}, "
              f"v2 {store.v2.cache_key[:12]}")
        kubelet = kwok_node(cp)
        run = ScaleRun(cp, audit, store, NODE, options, say=lambda m: print(m, flush=True))
        cases = run.results  # what was measured stays, should a case fail
        try:
            run.run()
        except Exception as exc:  # written down with what was measured before it
            failure = f"{type(exc).__name__}: {exc}"
            print(f"FAILED: {failure}")
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
            "controller_manager_args": list(CONTROLLER_MANAGER_ARGS),
            "replicas": 1,
        },
        "versions": {
            c: binary_version(c).rsplit("@", 1)[-1]
            for c in ("kube-apiserver", "kube-controller-manager", "etcd", "kwok")
        },
        "operator_code": code,
        "counted": "operator requests: the API server's audit log filtered by the operator's "
        "ServiceAccount user (kopf's own requests included; KWOK, controller-manager and "
        "harness excluded); apiserver rate: apiserver_request_total deltas (all clients); "
        "process: /proc VmHWM, utime+stime, threads, established TCP connections (1 s samples)",
        "cases": cases,
    }
    if failure:
        result["failure"] = failure
        print(json.dumps(result, indent=2)[:6000])
    for anchor in ("anchor", "anchor-children"):
        done = ("process" in cases.get(anchor, {}), "process" in cases.get("onnxship", {}))
        if all(done):
            key = "ratios_onnxship_over_" + anchor.replace("-", "_")
            result[key] = ratios(cases[anchor], cases["onnxship"])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    if args.report:
        write_report(result)
    if not failure:
        print(json.dumps(summary(result), indent=2))
    print(f"written to {args.output}")
    return 1 if failure else 0


REPORT = ROOT / "bench" / "results" / "REPORT.md"
BEGIN, END = "<!-- scale_bench:begin -->", "<!-- scale_bench:end -->"


def _top(counts: dict[str, float], n: int = 6) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in list(counts.items())[:n])


def _code(code: dict[str, Any]) -> str:
    if not code:
        return "not recorded"
    dirty = code.get("uncommitted_operator_files") or []
    extra = f" with {len(dirty)} uncommitted files of operator/onnxship" if dirty else ""
    return f"commit {code.get('commit')}{extra} ({code.get('source')})"


def report_section(result: dict[str, Any]) -> list[str]:
    """The REPORT.md section: every figure beside the anchor's, from one JSON."""
    o, cases = result["options"], result["cases"]
    a, b = cases.get("anchor", {}), cases.get("onnxship", {})
    c = cases.get("anchor-children", {})
    r = result.get("ratios_onnxship_over_anchor", {})
    rc = result.get("ratios_onnxship_over_anchor_children", {})

    def g(c: dict[str, Any], *path: str) -> Any:
        for k in path:
            c = c.get(k, {}) if isinstance(c, dict) else {}
        return c if c != {} else None

    def row(figure: str, path: tuple[str, ...], unit: str = "", ratio: str = "") -> str:
        ours, anchor, children = g(b, *path), g(a, *path), g(c, *path)
        cell = lambda v: "-" if v is None else f"{v:g}{unit}"  # noqa: E731
        rv = r.get(ratio) if ratio else None
        rcv = rc.get(ratio) if ratio else None
        return (
            f"| {figure} | {cell(ours)} | {cell(anchor)} | {'' if rv is None else rv} "
            f"| {cell(children)} | {'' if rcv is None else rcv} |"
        )

    lines = [
        BEGIN,
        f"## Operator at scale: {o['count']:,} ModelDeployments on the real API server "
        "(scale_bench.py, issue 21)",
        "",
        f"`make bench-scale` ({result['started_utc']}, {result['wall_seconds'] / 60:.0f} min, "
        f"{result['cpus']} CPUs; load average {(g(a, 'loadavg_start') or ['?'])[0]} "
        f"at the start, {(g(b, 'loadavg_end') or g(a, 'loadavg_end') or ['?'])[0]} at the end). "
        "kube-apiserver, etcd and "
        "kube-controller-manager "
        f"{result['versions']['kube-apiserver']} (e2e/; the controller-manager with "
        f"{' '.join(o.get('controller_manager_args') or ['its default client rate limit'])}: "
        "at its default, 20 requests/s per controller, it makes Pods at 5 a second whatever "
        f"the operator does), KWOK {result['versions']['kwok']} "
        "plays the node (Pods Ready without running), moto S3 holds both models' artifacts "
        f"(pinned digests: no Job). {o['count']:,} ModelDeployments applied, then the operator "
        f"started (the clock starts with it); {o['canaries']} model changes ({o['steps']}); "
        f"the operator restarted at rest; all deleted at once. Resync {o['resync_seconds']:g} s "
        f"(the operator's default), rest windows {o['rest_seconds']:g} s, 1 replica a revision. "
        "**Anchors**, on the same objects in namespaces of their own, before onnxship in the "
        "same run: a minimal kopf operator that writes status on create and on spec "
        "changes (bench/operator_bench.py's, kopf's Events off); and a minimal kopf operator "
        "that makes onnxship's critical path, one Deployment and one Service per object and "
        "status Ready once its Pod is (e2e/harness/scale.py ANCHOR_CHILDREN: a kopf index of "
        "the objects' phases, an event handler on its Deployments). "
        "**Counted:** " + result["counted"] + ". **Operator code:** "
        + _code(result.get("operator_code") or {})
        + ".",
        "",
        "| figure | onnxship | anchor: status only | ratio | anchor: Deployment + Service "
        "| ratio |",
        "|---|---:|---:|---:|---:|---:|",
        row("time to all Ready", ("seconds_to_all_ready",), " s", "time_to_all_ready"),
        row("peak RSS (VmHWM)", ("process", "peak_rss_mb"), " MB", "peak_rss"),
        row("CPU seconds, whole run", ("process", "cpu_seconds"), " s", "cpu_seconds"),
        row("threads (max sampled)", ("process", "threads_max")),
        row("open TCP connections (max sampled)", ("process", "connections_max")),
        row(
            "API requests per object, start to all Ready",
            ("ready", "requests_per_object"),
            "",
            "requests_per_object_to_ready",
        ),
        row(
            "operator requests/s at rest",
            ("rest", "operator_requests_per_second"),
            "",
            "requests_per_second_at_rest",
        ),
        row("requests per object per pass at rest", ("rest", "requests_per_object_per_pass")),
        row("writes at rest", ("rest", "operator_writes")),
        row(
            "API server requests/s at rest, all clients",
            ("rest", "apiserver_requests_per_second_all_clients"),
        ),
        row(f"{o['canaries']} canaries: time to all done", ("canary", "seconds_to_all_done"), " s"),
        row("canaries with every step written", ("canary", "canaries_with_every_step_written")),
        row(
            "restart at rest: time back to rest",
            ("restart", "seconds_back_to_rest"),
            " s",
            "seconds_back_to_rest_after_restart",
        ),
        row("restart at rest: writes (must be 0)", ("restart", "writes")),
        row("restart at rest: objects changed (resourceVersion)", ("restart", "objects_changed")),
        row("delete all: time until gone", ("delete", "seconds_to_all_gone"), " s"),
        row("delete all: time until children gone", ("delete", "seconds_to_children_gone"), " s"),
        "",
    ]
    lines += [
        "Read with care: onnxship's Ready (and the second anchor's) waits for its Pods (the "
        "controller-manager's ReplicaSets and KWOK, on the same 2 cores), the status-only "
        "anchor's for its own status write; onnxship also makes the Service users call, which "
        "selects the revision's pods at rest (no router Pod: plan/front.py), and a router "
        "(Deployment, ConfigMap) per canary until it ends, which the second anchor does not; "
        "children gone after a delete is the garbage collector's and KWOK's time; the API "
        "server's rate at rest counts every client (KWOK's leases, the harness's "
        "/metrics reads), the operator's is from the audit log.",
        "",
    ]
    if b:
        seqs = g(b, "canary", "canary_weight_sequences") or {}
        lines += [
            "onnxship's requests per object, start to all Ready: "
            + _top(g(b, "ready", "requests_per_object_by_verb") or {}, 10)
            + ". At rest, per window: "
            + _top(g(b, "rest", "operator_requests_by_verb") or {})
            + ". Canary weights written (sequence: canaries): "
            + "; ".join(f"{k}: {v}" for k, v in seqs.items())
            + ".",
            "",
        ]
    if result.get("failure"):
        lines += [f"**The run failed:** {result['failure']}", ""]
    return [*lines, END]


def write_report(result: dict[str, Any], path: Path = REPORT) -> None:
    """Put the section into REPORT.md: in place of the last one, else before ## GPU."""
    text = path.read_text() if path.exists() else ""
    section = "\n".join(report_section(result))
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    elif "\n## GPU" in text:
        head, rest = text.split("\n## GPU", 1)
        text = head + "\n" + section + "\n\n## GPU" + rest
    else:
        text += "\n" + section + "\n"
    path.write_text(text)


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
    for key in ("ratios_onnxship_over_anchor", "ratios_onnxship_over_anchor_children"):
        if key in result:
            out[key.removeprefix("ratios_")] = result[key]
    return out


if __name__ == "__main__":
    sys.exit(main())
