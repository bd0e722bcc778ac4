"""`onnxship route`: the builtin traffic router."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app


@app.command("route")
def route_command(
    host: str = typer.Option("127.0.0.1", help="Address of the inference port."),
    port: int = typer.Option(8080, help="Inference port: /v2/..., /metrics, /healthz."),
    routes: Path | None = typer.Option(
        None, "--routes", help="Route table (JSON); reloaded when it changes."
    ),
    admin_host: str = typer.Option("127.0.0.1", help="Address of the admin port."),
    admin_port: int = typer.Option(
        0, help="Admin port (GET/PUT /onnxship/routes); 0 = no admin endpoint."
    ),
    admin_token: str = typer.Option(
        "", envvar="ONNXSHIP_ROUTER_TOKEN", help="Bearer token the admin port requires."
    ),
    timeout: float = typer.Option(
        30.0,
        help="Seconds a backend may take to accept and answer (then 504); for a streamed "
        "answer, to send its head and between two pieces of it.",
    ),
    generation_timeout: float = typer.Option(
        600.0,
        help="Seconds a generation answered whole (/v1/...completions, OIP generate without "
        "stream) may take, and a mirror's greedy copy of one.",
    ),
    sticky_header: str = typer.Option(
        "", help="Header whose value pins a client to one revision (e.g. x-session-id)."
    ),
    watch_interval: float = typer.Option(0.5, help="Seconds between checks of --routes."),
    max_connection_age: float = typer.Option(
        0.0,
        min=0.0,
        help="Seconds a client connection is kept: the first answer after that says "
        "'Connection: close', so clients reconnect (and reach whatever their Service selects "
        "by then). 0: as long as it is used.",
    ),
    workers: int = typer.Option(
        1,
        min=0,
        help="Router processes sharing the inference port (SO_REUSEPORT), one core each; "
        "routes, /metrics and the admin port stay those of one router. 0: one per CPU of the "
        "container's CPU limit (1 without a limit).",
    ),
) -> None:
    """Split inference requests between revisions by weight, mirror to a canary, count."""
    from onnxship.router.proxy import ProxySettings
    from onnxship.router.server import RouterSettings, run
    from onnxship.router.workers import workers_for_quota

    status = run(
        RouterSettings(
            host=host,
            port=port,
            routes_file=routes,
            admin_host=admin_host,
            admin_port=admin_port,
            admin_token=admin_token,
            watch_interval=watch_interval,
            workers=workers or workers_for_quota(),
            max_connection_age=max_connection_age or None,
            proxy=ProxySettings(
                timeout=timeout,
                generation_timeout=generation_timeout,
                sticky_header=sticky_header,
            ),
        )
    )
    if status:
        raise typer.Exit(status)
