"""One `onnxship serve` process: HTTP and gRPC front ends over one data plane, and its lifecycle.

Order matters for Kubernetes probes: the listeners open first (live at once), the model loads
in the background (ready after warm-up), and SIGTERM turns readiness off, lets in-flight
requests finish within the grace period, then exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from .config import ServeConfig
from .dataplane import DataPlane
from .errors import StartupError
from .grpc_service import create_server
from .rest import RestFrontEnd

log = logging.getLogger(__name__)


async def serve(config: ServeConfig, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set); raises StartupError if loading fails."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on the main thread
            loop.add_signal_handler(sig, stop.set)

    dataplane = DataPlane(config)
    runner = web.AppRunner(
        RestFrontEnd(dataplane, config.max_body_bytes).app(), access_log=None, handle_signals=False
    )
    await runner.setup()
    grpc_server = None
    try:
        site = web.TCPSite(runner, config.host, config.http_port)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {config.host}:{config.http_port}: {exc.strerror}", kind="failure"
            ) from exc
        grpc_port = None
        if config.grpc_port is not None:
            try:
                grpc_server, grpc_port = create_server(
                    dataplane, config.host, config.grpc_port, config.max_body_bytes
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

        load = asyncio.create_task(dataplane.load(), name="load-model")
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
        await runner.cleanup()
        await dataplane.close()
    log.info("stopped")


def run(config: ServeConfig) -> None:
    """Blocking entry point for the CLI and for anything that runs the server in-process."""
    asyncio.run(serve(config))
