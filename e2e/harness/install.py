"""What an install puts in the cluster: the CRD, and the operator's ServiceAccount with a
Role built from ``onnxship.controller.rbac.RULES`` (what the Helm chart renders)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from onnxship.controller.rbac import RULES

from .api import Api, Response, wait_for

REPO = Path(__file__).resolve().parents[2]
# E2E_CRD=<file> tries another CRD (a candidate fix) before regenerating the committed one.
CRD_FILE = Path(os.environ.get("E2E_CRD") or REPO / "crds" / "modeldeployments.onnxship.io.yaml")
CRD_NAME = "modeldeployments.onnxship.io"
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
OPERATOR_SA = "onnxship-operator"


def crd_document() -> dict[str, Any]:
    return dict(yaml.safe_load(CRD_FILE.read_text()))


def install_crd(admin: Api) -> Response:
    """Create (or replace) the committed CRD and wait until it is served."""
    doc = crd_document()
    live = admin.get(f"{CRD_PATH}/{CRD_NAME}")
    if live is None:
        resp = admin.request("POST", CRD_PATH, doc, query={"fieldValidation": "Strict"})
    else:
        doc["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
        resp = admin.request(
            "PUT", f"{CRD_PATH}/{CRD_NAME}", doc, query={"fieldValidation": "Strict"}
        )
    if not resp.ok:
        return resp

    def established() -> bool:
        crd = admin.get(f"{CRD_PATH}/{CRD_NAME}") or {}
        conds = {c["type"]: c["status"] for c in (crd.get("status") or {}).get("conditions") or []}
        return conds.get("Established") == "True"

    wait_for(established, timeout=30, what="the CRD to be Established")
    # Discovery lags a moment behind Established: wait until the resource answers.
    wait_for(
        lambda: admin.request("GET", "/apis/onnxship.io/v1alpha1/modeldeployments").ok,
        timeout=30,
        what="modeldeployments to be served",
    )
    return resp


def install_operator_rbac(
    admin: Api, namespace: str, rules: list[dict[str, Any]] | None = None
) -> None:
    """The operator's ServiceAccount, Role and RoleBinding in ``namespace``."""
    ns = f"/api/v1/namespaces/{namespace}"
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    admin.create(f"{ns}/serviceaccounts", {"metadata": {"name": OPERATOR_SA}})
    admin.create(
        f"{rbac}/roles",
        {"metadata": {"name": OPERATOR_SA}, "rules": RULES if rules is None else rules},
    )
    admin.create(
        f"{rbac}/rolebindings",
        {
            "metadata": {"name": OPERATOR_SA},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": OPERATOR_SA,
            },
            "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": namespace}],
        },
    )


def service_account_token(admin: Api, namespace: str, name: str = OPERATOR_SA) -> str:
    """A bound token for the ServiceAccount (TokenRequest), as a pod would get one."""
    body = admin.must(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 7200},
        },
    )
    return str(body["status"]["token"])


HELM = REPO / ".cache" / "bin" / "helm"
CHART = REPO / "charts" / "onnxship"


def helm_available() -> bool:
    """The chart and a helm binary (scripts/build-helm.sh) are there, and not refused by
    E2E_INSTALL=rules (which installs a Role built from RULES instead)."""
    if os.environ.get("E2E_INSTALL", "") == "rules":
        return False
    return os.access(HELM, os.X_OK) and (CHART / "Chart.yaml").exists()


def helm_install(kubeconfig: Path, namespace: str, folder: Path) -> str:
    """`helm install` the chart into ``namespace``, watching only it; returns its log.

    The chart's operator Deployment is created too, but nothing runs its image: the tests
    run the operator as a process with the chart's ServiceAccount token instead.
    """
    import subprocess

    argv = [
        str(HELM),
        "upgrade",
        "--install",
        "onnxship",
        str(CHART),
        "--namespace",
        namespace,
        "--kubeconfig",
        str(kubeconfig),
        "--set",
        f"watchNamespaces={{{namespace}}}",
        "--set",
        f"serviceAccount.name={OPERATOR_SA}",
    ]
    if os.environ.get("E2E_CRD"):  # trying a candidate CRD: the harness installed it already
        argv.append("--skip-crds")
    env = {
        "HOME": str(folder),
        "PATH": "/usr/bin:/bin",
        "HELM_CACHE_HOME": str(folder / "helm"),
        "HELM_CONFIG_HOME": str(folder / "helm"),
        "HELM_DATA_HOME": str(folder / "helm"),
    }
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"helm install failed ({done.returncode}):\n{done.stderr}")
    return done.stdout
