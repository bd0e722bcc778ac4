"""`onnxship operator`: the Kubernetes operator (the operator image's entry point)."""

from __future__ import annotations

import json

import typer

from .app import app


@app.command("operator")
def operator_command(
    namespaces: list[str] = typer.Option(
        [], "--namespace", "-n", help="Watch these namespaces (repeat); none = all (-A)."
    ),
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A"),
    peering: str = typer.Option(
        "", "--peering", envvar="ONNXSHIP_PEERING", help="kopf peering name: replicas elect one."
    ),
    priority: int = typer.Option(0, "--priority", envvar="ONNXSHIP_PRIORITY"),
    liveness_port: int = typer.Option(8080, "--liveness-port", help="kopf's /healthz."),
    metrics_port: int = typer.Option(9090, "--metrics-port", help="Prometheus /metrics; 0 = off."),
) -> None:
    """Run the operator: reconcile ModelDeployments in the current cluster."""
    import kopf
    from prometheus_client import start_http_server

    from onnxship.controller.handlers import register
    from onnxship.controller.metrics import OperatorMetrics
    from onnxship.controller.wiring import production_wiring

    registry = kopf.OperatorRegistry()
    settings = kopf.OperatorSettings()
    # A namespaced install may not list namespaces or CRDs: tell kopf not to try.
    settings.scanning.disabled = bool(namespaces) and not all_namespaces
    metrics = OperatorMetrics()
    register(registry, production_wiring, metrics, namespaces=namespaces)
    if metrics_port:
        start_http_server(metrics_port, registry=metrics.registry)
    kopf.run(
        registry=registry,
        settings=settings,
        standalone=not peering,
        peering_name=peering or None,
        priority=priority,
        namespaces=namespaces,
        clusterwide=all_namespaces or not namespaces,
        liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz",
    )


@app.command("rbac")
def rbac_command(
    cluster: bool = typer.Option(False, "--cluster", help="Include the rules for all namespaces."),
) -> None:
    """Print the RBAC rules the operator needs (JSON), as the Helm chart renders them."""
    from onnxship.controller.rbac import CLUSTER_RULES, RULES

    print(json.dumps(RULES + (CLUSTER_RULES if cluster else []), indent=2))
