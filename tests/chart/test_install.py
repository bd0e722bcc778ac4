"""`helm install` into a real kube-apiserver (e2e/'s control plane): the API server accepts
every object, and the StatefulSet controller gives each peered replica its own kopf priority.

Slow (a control plane starts); skipped when e2e/build.sh has not built the binaries. The
chart's own CRDs are applied by hand with --skip-crds, so that this checks the templates even
while the ModelDeployment CRD is refused (that CRD is e2e/test_crd.py's subject).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import CHART, Helm

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from e2e.harness.control_plane import missing_binaries, start_control_plane

    missing = missing_binaries()
    if missing:
        pytest.skip(f"control-plane binaries not built ({', '.join(missing)}): run e2e/build.sh")
    cp = start_control_plane()
    try:
        crds = yaml.safe_load_all((CHART / "crds" / "kopf-peerings.yaml").read_text())
        for crd in crds:
            cp.admin.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        yield cp
    finally:
        cp.stop()


def install(
    helm: Helm, cp: Any, home: Path, release: str, namespaces: list[str], *sets: str
) -> str:
    """Install into namespaces[0], creating every namespace listed first."""
    for name in namespaces:
        if not cp.admin.get(f"/api/v1/namespaces/{name}"):
            cp.admin.create("/api/v1/namespaces", {"metadata": {"name": name}})
    namespace = namespaces[0]
    proc = subprocess.run(
        [str(helm.binary), "install", release, str(CHART), "--skip-crds",
         "--kubeconfig", str(cp.admin_kubeconfig), "--namespace", namespace,
         *[a for s in sets for a in ("--set", s)]],
        capture_output=True, text=True, timeout=300,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_api_server_accepts_every_shape_of_the_chart(
    helm: Helm, cluster: Any, tmp_path: Path
) -> None:
    install(helm, cluster, tmp_path, "one", ["onnxship-system"])
    install(
        helm, cluster, tmp_path, "scoped", ["ops", "ml"], "watchNamespaces={ml,ops}", "replicas=2"
    )
    admin = cluster.admin
    assert admin.get("/apis/apps/v1/namespaces/onnxship-system/deployments/one-onnxship")
    assert admin.get("/apis/rbac.authorization.k8s.io/v1/clusterroles/one-onnxship")
    for ns in ("ml", "ops"):
        assert admin.get(
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/scoped-onnxship"
        )
        assert admin.get(f"/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings/onnxship")


def test_each_peered_replica_gets_its_pod_index_as_priority(
    helm: Helm, cluster: Any, tmp_path: Path
) -> None:
    from e2e.harness.api import wait_for

    install(helm, cluster, tmp_path, "ha", ["ha"], "replicas=3", "peering.name=ha")
    assert cluster.admin.get("/apis/kopf.dev/v1/clusterkopfpeerings/ha")

    def three_pods() -> list[dict[str, Any]] | None:
        pods = cluster.admin.items("/api/v1/namespaces/ha/pods")
        return pods if len(pods) == 3 else None

    pods = wait_for(three_pods, timeout=120, what="3 operator pods from the StatefulSet")
    indexes = sorted(p["metadata"]["labels"]["apps.kubernetes.io/pod-index"] for p in pods)
    assert indexes == ["0", "1", "2"]  # three distinct kopf priorities
    for pod in pods:
        (container,) = pod["spec"]["containers"]
        assert "--peering=ha" in container["args"]
