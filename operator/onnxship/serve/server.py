"""One `onnxship serve` process: HTTP and gRPC front ends over one data plane, and its lifecycle.

Order matters for Kubernetes probes: the listeners open first (live at once), the model loads
in the background (ready after warm-up), and SIGTERM turns readiness off, lets in-flight
requests finish within the grace period, then exits 0.

With ``--workers N`` (N > 1) ``run`` starts a supervisor instead (serve/workers.py) and each
worker process runs ``serve`` with its ``PodMember``: the ports shared with SO_REUSEPORT,
readiness and ``/metrics`` the pod's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from .. import eventloop
from ..http1.server import FrontServer
from .config import ServeConfig
from .dataplane import DataPlane
from .errors import StartupError
from .grpc_service import create_server
from .metrics import ServeMetrics
from .pod import PodMember
from .rest import TOO_LARGE, RestFrontEnd

log = logging.getLogger(__name__)


class PodDataPlane(DataPlane):
    """A worker's data plane: ready only when the whole pod is (every worker loaded and
    warmed up), whichever worker a probe lands on. Requests are still refused by the
    worker's own state (loading, draining)."""

    def __init__(self, config: ServeConfig, pod: PodMember) -> None:
        super().__init__(config, ServeMetrics(config.name, config.version, pod.metrics_dir))
        self.pod = pod

    def ready(self) -> bool:
        return super().ready() and self.pod.all_ready()


async def serve(
    config: ServeConfig, stop: asyncio.Event | None = None, *, pod: PodMember | None = None
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set); raises StartupError if loading fails.

    ``pod``: this process is one of the pod's workers (serve/workers.py starts them).
    """
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on the main thread
            loop.add_signal_handler(sig, stop.set)

    dataplane = DataPlane(config) if pod is None else PodDataPlane(config, pod)
    worker = None if pod is None else str(pod.index)
    max_age = config.max_connection_age or None
    rest = RestFrontEnd(dataplane, config.max_body_bytes, worker, config.revision, max_age)
    app = rest.app()
    # The httptools server listens; aiohttp's serves, on the same connections, what it
    # hands over (rest.py).
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    front = FrontServer(
        rest.handle,
        config.max_body_bytes,
        fallback=rest.fallback(runner.server),
        too_large=TOO_LARGE,
        refusal_headers=rest.extra_headers,
        max_age=max_age,
    )
    grpc_server = None
    reuse_port = pod is not None  # one process alone keeps "port in use" an error
    try:
        try:
            await front.start(config.host, config.http_port, reuse_port=reuse_port)
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {config.host}:{config.http_port}: {exc.strerror}", kind="failure"
            ) from exc
        grpc_port = None
        if config.grpc_port is not None:
            try:
                grpc_server, grpc_port = create_server(
                    dataplane,
                    config.host,
                    config.grpc_port,
                    config.max_body_bytes,
                    reuse_port=reuse_port,
                    revision=config.revision,
                )
            except (OSError, RuntimeError) as exc:
                raise StartupError(
                    f"cannot listen for gRPC on {config.host}:{config.grpc_port}: {exc}",
                    kind="failure",
                ) from exc
            await grpc_server.start()
        log.info(
            "listening",
            extra={"host": config.host, "http_port": config.http_port, "grpc_port": grpc_port},
        )

        load = asyncio.create_task(_load(dataplane, pod), name="load-model")
        stopped = asyncio.create_task(stop.wait(), name="wait-for-stop")
        await asyncio.wait({load, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if load.done():
            load.result()  # a failed load ends the process (and the pod restarts)
            await stopped
        else:
            load.cancel()
            await asyncio.gather(load, return_exceptions=True)

        log.info(
            "shutting down: draining in-flight requests", extra={"in_flight": dataplane.in_flight}
        )
        if not await dataplane.drain(config.grace_period_s):
            log.warning(
                "grace period over with requests still in flight",
                extra={"in_flight": dataplane.in_flight, "grace_period_s": config.grace_period_s},
            )
    finally:
        if grpc_server is not None:
            await grpc_server.stop(grace=1.0)
        await front.shutdown(grace=1.0)
        await runner.cleanup()
        await dataplane.close()
    log.info("stopped")


async def _load(dataplane: DataPlane, pod: PodMember | None) -> None:
    await dataplane.load()
    if pod is not None:
        pod.mark_ready()


def run(config: ServeConfig) -> int:
    """Blocking entry point for the CLI: the server, or with several workers their
    supervisor. Returns the exit status (non-zero: a worker died, see serve/workers.py)."""
    if config.workers == 1:
        eventloop.run(serve(config))
        return 0
    from .workers import run_pod  # the supervisor: only where workers may be more than one

    return run_pod(config)
