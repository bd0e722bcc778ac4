"""Fixtures of the e2e suite: one real control plane per session, a namespace per test.

Run with ``make e2e`` (builds the binaries first); ``pytest e2e`` alone skips every test that
needs the control plane, saying why, when ``.cache/e2e/bin`` lacks a binary.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from e2e.harness.api import Api, wait_for
from e2e.harness.control_plane import (
    BIN,
    CONTROLLERS,
    ControlPlane,
    binary_version,
    kwok_available,
    missing_binaries,
    start_control_plane,
    start_kwok,
)
from e2e.harness.install import (
    helm_available,
    helm_install,
    install_crd,
    install_operator_rbac,
    service_account_token,
)
from e2e.harness.kubelet import KWOK_ANNOTATION, NODE, FakeKubelet
from e2e.harness.operator import Operator, start_operator
from e2e.harness.process_node import ProcessKubelet

_names = itertools.count(1)


def pytest_report_header() -> list[str]:
    return [
        f"e2e binaries ({BIN}): "
        + ", ".join(
            f"{c}={binary_version(c).rsplit('@', 1)[-1]}"
            for c in ("kube-apiserver", "kube-controller-manager", "etcd", "kwok")
        )
        + f"; node played by {'kwok' if kwok_available() else 'the harness'}"
    ]


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    missing = missing_binaries()
    if missing:
        pytest.skip(
            f"control-plane binaries not built ({', '.join(missing)} missing in {BIN}): "
            "run e2e/build.sh or make e2e"
        )
    cp = start_control_plane(CONTROLLERS)
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def admin(control_plane: ControlPlane) -> Api:
    return control_plane.admin


@pytest.fixture(scope="session")
def crd_install(admin: Api) -> Any:
    """The response to creating the committed CRD (its warnings included)."""
    return install_crd(admin)


@pytest.fixture(scope="session")
def crd(crd_install: Any) -> Any:
    """The CRD is served; tests that need it fail at once when the API server refused it."""
    if not crd_install.ok:
        pytest.fail(
            f"the API server refused the CRD ({crd_install.status}): {crd_install.message}",
            pytrace=False,
        )
    return crd_install


@pytest.fixture(scope="session")
def kubelet(control_plane: ControlPlane, admin: Api) -> Iterator[FakeKubelet]:
    """The node: KWOK reports status when built (E2E_NODES=harness: the harness does)."""
    use_kwok = kwok_available()
    if use_kwok:
        start_kwok(control_plane, KWOK_ANNOTATION)
    k = FakeKubelet(admin, kwok=use_kwok)
    k.start()
    if use_kwok:
        wait_for(
            lambda: any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in (admin.get(f"/api/v1/nodes/{NODE}") or {})
                .get("status", {})
                .get("conditions", [])
            ),
            timeout=60,
            what="KWOK to make the node Ready",
        )
    yield k
    k.stop()


@pytest.fixture(scope="session")
def process_node(control_plane: ControlPlane, admin: Api) -> Iterator[ProcessKubelet]:
    """The node whose kubelet runs each Pod's command as a local process (the full path).

    Its Pods' logs are in the run folder, ``pods/<namespace>_<pod>.log``."""
    k = ProcessKubelet(admin, folder=control_plane.folder)
    k.start()
    yield k
    k.stop()


@pytest.fixture(scope="session")
def s3() -> Iterator[str]:
    """An S3-speaking server on 127.0.0.1 (moto's ThreadedMotoServer): its endpoint URL."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def namespace(admin: Api, crd: Any, kubelet: FakeKubelet) -> Iterator[str]:
    name = f"e2e-{next(_names)}"
    admin.create("/api/v1/namespaces", {"metadata": {"name": name}})
    wait_for(
        lambda: admin.get(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
        what="the namespace's default ServiceAccount",
    )
    kubelet.namespaces.add(name)
    yield name
    # The fake kubelet keeps confirming Pod deletions, so the namespace can finish going.
    admin.delete(f"/api/v1/namespaces/{name}")


@pytest.fixture
def operator(
    control_plane: ControlPlane, admin: Api, namespace: str
) -> Iterator[Callable[..., Operator]]:
    """Start the operator in ``namespace`` as its ServiceAccount; call again to restart it.

    Every operator started is stopped at the end, and none may have been refused by RBAC.
    """
    started: list[Operator] = []
    if helm_available():
        helm_install(control_plane.admin_kubeconfig, namespace, control_plane.folder)
    else:
        install_operator_rbac(admin, namespace)
    token = service_account_token(admin, namespace)

    def run(**env: str) -> Operator:
        op = start_operator(
            control_plane.folder,
            control_plane.server,
            control_plane.pki.ca_cert,
            token,
            namespace,
            env=env,
            name=f"operator{len(started) + 1}",
        )
        started.append(op)
        return op

    yield run
    for op in started:
        op.stop()
    refused = sorted({why for op in started for why in op.refusals()})
    assert not refused, "the API server refused the operator (RBAC):\n" + "\n".join(refused)
