"""The operator's client keeps a connection for each pass thread.

The kubernetes client pools 5 connections per CPU: on 2 CPUs, 10 for 16 pass threads, so
passes in flight at once opened connections only to throw them away ("Connection pool is
full, discarding connection" in the log, and a new TLS handshake each time)."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxship.controller.kube import Kube
from onnxship.controller.metrics import OperatorMetrics
from onnxship.controller.wiring import production_wiring

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "http://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def pool_size(kube: Kube) -> int:
    return int(kube._api.rest_client.pool_manager.connection_pool_kw["maxsize"])


def test_the_pool_holds_a_connection_for_every_pass_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(KUBECONFIG)
    monkeypatch.setenv("KUBECONFIG", str(config))
    monkeypatch.setenv("ONNXSHIP_WORKERS", "40")
    wiring = production_wiring(OperatorMetrics())
    assert pool_size(wiring.kube) == 41
    # and never fewer than the client's own default
    assert pool_size(Kube.from_environment(connections=1)) >= 5
