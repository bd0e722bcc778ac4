"""The process node's own parts, without a cluster: what it promises the Pods it runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from e2e.harness.process_node import POD_ENV, PodWorker, atomic_write_dir, expand


def test_configmap_volumes_are_swapped_whole(tmp_path: Path) -> None:
    """The kubelet's atomic writer: files reached through ``..data``, replaced by one rename,
    a removed key gone, an unchanged object not rewritten."""
    vol = tmp_path / "routes"
    assert atomic_write_dir(vol, {"routes.json": b"{1}", "extra": b"x"})
    first = os.readlink(vol / "..data")
    assert (vol / "routes.json").read_bytes() == b"{1}"
    assert os.readlink(vol / "routes.json") == "..data/routes.json"
    assert not atomic_write_dir(vol, {"routes.json": b"{1}", "extra": b"x"})
    assert atomic_write_dir(vol, {"routes.json": b"{2}"})
    assert os.readlink(vol / "..data") != first and not (vol / first).exists()
    assert (vol / "routes.json").read_bytes() == b"{2}" and not (vol / "extra").exists()


def test_paths_under_a_mount_and_wildcard_addresses_are_rewritten(tmp_path: Path) -> None:
    mounts = {"/var/cache/onnxship": tmp_path / "cache", "/dev/termination-log": tmp_path / "t"}
    rewrite = PodWorker._rewrite
    assert rewrite("/var/cache/onnxship", mounts) == str(tmp_path / "cache")
    assert rewrite("/var/cache/onnxship/a/b", mounts) == f"{tmp_path / 'cache'}/a/b"
    assert rewrite("--result-file=/dev/termination-log", mounts) == f"--result-file={tmp_path}/t"
    assert rewrite("/var/cache/onnxshipper", mounts) == "/var/cache/onnxshipper"
    assert rewrite("s3://bucket/var/cache/onnxship", mounts) == "s3://bucket/var/cache/onnxship"
    assert expand("$(A)/x $$(A) $(NOPE)", {"A": "1"}) == "1/x $(A) $(NOPE)"


def test_cluster_names_and_pod_ips_resolve_to_local_endpoints(tmp_path: Path) -> None:
    """pod_env/sitecustomize.py in a fresh interpreter, as a Pod's process loads it."""
    services = tmp_path / "services.json"
    services.write_text(
        json.dumps(
            {
                "model.ns": {"8000": [["198.18.0.7", 8000]], "8001": []},
                "router.ns": {"80": [["198.18.0.9", 8080]]},
            }
        )
    )
    probe = """
import json, socket
def one(host, port):
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4]
    except socket.gaierror as exc:
        return ["gaierror", exc.errno == socket.EAI_NONAME]
print(json.dumps([
    one("model.ns.svc", 8000),
    one("router.ns.svc.cluster.local", 80),
    one("model.ns.svc", 8001),
    one("gone.ns.svc", 8000),
    one("198.18.0.9", 8080),
    one("127.0.0.1", 5),
]))
"""
    env = {
        **os.environ,
        "PYTHONPATH": str(POD_ENV),
        "E2E_SERVICES_FILE": str(services),
        "E2E_POD_NETWORK": "198.18.=127.42.",
    }
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == [
        ["127.42.0.7", 8000],  # a Service port to its endpoint's target port
        ["127.42.0.9", 8080],  # port 80 -> targetPort http (8080), as kube-proxy does
        ["127.255.255.254", 8001],  # no ready endpoint: refused
        ["gaierror", True],  # no such Service: NXDOMAIN
        ["127.42.0.9", 8080],  # a Pod IP, through the Pod network
        ["127.0.0.1", 5],
    ]
