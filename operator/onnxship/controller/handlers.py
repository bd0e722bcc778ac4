"""Every kopf registration of the operator, in one place; each delegates to `reconcile`.

One async daemon per ModelDeployment runs reconcile passes (in one shared pool of worker
threads, ``timing.workers``: the Kubernetes client and the store are blocking) and sleeps
until the plan's next deadline or until a change to the spec, a command annotation or a
child's status (through the informers, controller/informers.py) wakes it. Handlers never
sleep on kopf's event loop and never return values into status.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import kopf

from onnxship.api import GROUP, PLURAL, VERSION
from onnxship.plan import workloads as w

from .kube import KubeError
from .metrics import OperatorMetrics
from .ports import Wiring
from .reconcile import delete_children, reconcile

log = logging.getLogger(__name__)
# kopf ignores annotations under its own storage prefix when it diffs; ours (the command
# annotation) must stay visible, so kopf keeps its state under a prefix of its own.
ANNOTATION_PREFIX = "kopf.onnxship.io"
MD = "ModelDeployment"
# kopf's own client opens a connection per request in flight (its connector has no limit):
# 1,000 ModelDeployments created at once had 400+ open, each with asyncio's 256 KB TLS read
# buffer, ~0.3 MB of RSS apiece (more than every informer cache together). What kopf sends
# (its progress annotations, our events) is short requests plus one watch per kind.
KOPF_CONNECTIONS = 32


async def _stop_at_exit(kube: Any) -> None:
    """Stops the informers when the operator's loop ends, however it ends."""
    try:
        await asyncio.Event().wait()
    finally:
        kube.stop_informers()


def bounded_session(
    info: kopf.ConnectionInfo, limit: int = KOPF_CONNECTIONS
) -> kopf.AiohttpSession:
    """The session kopf would make from ``info``, with at most ``limit`` connections (kopf
    closes it when it logs in again)."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
    )
    return kopf.AiohttpSession(
        server=info.server,
        default_namespace=info.default_namespace,
        priority=info.priority,
        expiration=info.expiration,
        aiohttp_session=session,
    )


def register(
    registry: kopf.OperatorRegistry,
    make_wiring: Callable[[OperatorMetrics], Wiring],
    metrics: OperatorMetrics | None = None,
    login: bool = True,
    namespaces: list[str] | None = None,
) -> dict[str, Any]:
    """Register the operator's handlers on ``registry``; returns its shared state (for tests).

    ``namespaces``: those the operator watches (None or [] = all), for its informers.

    ``login``: authenticate the kopf way (in-cluster ServiceAccount or kubeconfig, through the
    kubernetes client). A registry of our own does not get kopf's default login handlers, so
    we add it; tests that log in to a mock server pass False and bring their own.
    """
    shared: dict[str, Any] = {"metrics": metrics or OperatorMetrics(), "wakers": {}, "passes": {}}

    if login:

        @kopf.on.login(registry=registry)
        async def credentials(**kwargs: Any) -> kopf.AiohttpSession | None:
            info = await asyncio.to_thread(kopf.login_via_client, **kwargs)  # reads files
            return None if info is None else bounded_session(info)

    def wiring() -> Wiring:
        if "wiring" not in shared:
            shared["wiring"] = make_wiring(shared["metrics"])
        return shared["wiring"]  # type: ignore[no-any-return]

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Progress in annotations, not in status: status belongs to the CRD's schema.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix=ANNOTATION_PREFIX
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
        )
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 270
        loop = asyncio.get_running_loop()

        def wake_owner(namespace: str, name: str) -> None:
            event = shared["wakers"].get((namespace, name))
            if event is not None:
                event.set()

        def child_changed(kind: str, type_: str, obj: dict[str, Any]) -> None:
            """What the cluster's controllers do to our children (a Job finishing, pods
            becoming ready) wakes the owner at once, so the operator never polls for it; so
            does a ModelDeployment's change that our watch sees before kopf's handlers."""
            meta = obj.get("metadata") or {}
            labels = meta.get("labels") or {}
            if kind == MD:
                loop.call_soon_threadsafe(wake_owner, meta.get("namespace", ""), meta["name"])
            elif labels.get(w.L_COMPONENT) in ("model", "compress") or (
                kind == "Deployment" and labels.get(w.L_COMPONENT) == "router"
            ):  # a router becoming ready is what a canary's steps wait for (plan/front.py)
                owner = (meta.get("namespace", ""), labels.get(w.L_DEPLOYMENT, ""))
                loop.call_soon_threadsafe(wake_owner, *owner)

        wire = await asyncio.to_thread(wiring)  # the client's configuration reads files
        # No await from here to the informers' start, and their stop tied to this loop's
        # end: kopf skips its cleanup handlers when it is stopped during start-up, and a
        # watch left open would keep its threads (and the API server's stream) alive.
        shared["informers_guard"] = asyncio.create_task(_stop_at_exit(wire.kube))
        wire.kube.start_informers(namespaces, on_change=child_changed)
        # One pool for every object's passes. asyncio's default one has cpu + 4 threads: with
        # 200 ModelDeployments created at once on 2 cores, passes queued there for seconds
        # while they mostly wait on the API server.
        shared["pool"] = ThreadPoolExecutor(
            max_workers=wire.settings.timing.workers, thread_name_prefix="reconcile"
        )

    @kopf.on.cleanup(registry=registry)
    async def stop_informers(**_: Any) -> None:
        if "wiring" in shared:
            shared["wiring"].kube.stop_informers()
        if "informers_guard" in shared:
            # Done: left running, kopf would wait 5 s for it at every exit as a hung task.
            shared["informers_guard"].cancel()
        if "pool" in shared:
            shared["pool"].shutdown(wait=False, cancel_futures=True)

    def waker(namespace: str, name: str) -> asyncio.Event:
        return shared["wakers"].setdefault((namespace, name), asyncio.Event())  # type: ignore[no-any-return]

    def in_pass(namespace: str, name: str) -> threading.Lock:
        """Held by the worker thread of a reconcile pass. kopf cancels the daemon and calls
        the deletion handler at once, but a pass already in its thread goes on: one that read
        the object before its deletion would make children again after the clean-up."""
        return shared["passes"].setdefault((namespace, name), threading.Lock())  # type: ignore[no-any-return]

    @kopf.daemon(GROUP, VERSION, PLURAL, registry=registry, id="rollout", cancellation_timeout=5.0)
    async def rollout(
        stopped: kopf.DaemonStopped,
        namespace: str,
        name: str,
        body: kopf.Body,
        logger: Any,
        **_: Any,
    ) -> None:
        wake = waker(namespace, name)
        wire = wiring()
        metrics: OperatorMetrics = shared["metrics"]
        loop = asyncio.get_running_loop()

        def emit(type_: str, reason: str, message: str) -> None:
            metrics.on_event(type_, reason)
            # Events are posted from kopf's loop; this runs in a worker thread.
            loop.call_soon_threadsafe(
                lambda: kopf.event(body, type=type_, reason=reason, message=message)
            )
            # Not kopf's per-object logger: from a worker thread its event posting blocks.
            level = logging.WARNING if type_ == "Warning" else logging.INFO
            log.log(
                level,
                "%s/%s %s: %s",
                namespace,
                name,
                reason,
                message,
                extra={"object": f"{namespace}/{name}", "reason": reason},
            )

        while not stopped:
            wake.clear()
            # kopf's body is the newest it saw (a spec change, a command): the pass must not
            # act on an older copy (a no-op when the cache holds this version or a later one).
            wire.kube.seen(MD, body)
            with metrics.reconcile_seconds.time():
                queued = loop.time()

                def run(queued: float = queued) -> Any:
                    started = loop.time()
                    with in_pass(namespace, name):
                        result = reconcile(wire, namespace, name, emit)
                    log.debug(
                        "pass of %s/%s: waited %.3fs for a worker, ran %.3fs",
                        namespace,
                        name,
                        started - queued,
                        loop.time() - started,
                    )
                    return result

                try:
                    # In this task's context, as asyncio.to_thread does: emit() posts events
                    # through kopf, which finds its queue in context variables.
                    context = contextvars.copy_context()
                    outcome = await loop.run_in_executor(shared.get("pool"), context.run, run)
                except KubeError as exc:
                    metrics.reconciles.labels("error").inc()
                    if exc.status != 409:
                        logger.exception(f"reconcile failed, retrying: {exc}")
                        delay = wire.settings.timing.resync_seconds
                    else:
                        # A conflict: someone wrote the object meanwhile. The next pass reads
                        # it afresh; waiting for the resync would stall the rollout for nothing.
                        logger.warning(f"conflict, retrying at once: {exc}")
                        delay = wire.settings.timing.min_requeue_seconds
                except Exception as exc:
                    metrics.reconciles.labels("error").inc()
                    logger.exception(f"reconcile failed, retrying: {exc}")
                    delay = wire.settings.timing.resync_seconds
                else:
                    metrics.reconciles.labels("ok").inc()
                    if outcome is None:  # being deleted, or gone
                        metrics.forget(namespace, name)
                        # kopf runs the clean-up handler after it stops this daemon. Had the
                        # daemon ended by itself, kopf would drop its finalizer at once and
                        # never run the clean-up: the children would outlive their owner.
                        await stopped.wait()
                        return
                    if outcome.decision is not None:
                        metrics.on_status(namespace, name, outcome.decision.status)
                    delay = outcome.requeue_after
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=delay)
        shared["wakers"].pop((namespace, name), None)

    # No create/update handlers: the informers' own watch of ModelDeployments wakes an
    # object's daemon on any change of it (child_changed), a spec change or a command alike.
    # kopf would store a copy of the spec in an annotation for them, one more write per object
    # created: 1,000 of them at once queued behind kopf's 2,000 patches (bench/scale_bench.py).

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, id="cleanup", optional=True)
    async def cleanup(namespace: str, name: str, uid: str, logger: Any, **_: Any) -> None:
        owner = w.Owner(name=name, namespace=namespace, uid=uid)

        def delete() -> int:
            with in_pass(namespace, name):  # after the pass in flight; later ones see deletion
                return delete_children(wiring(), owner)

        removed = await asyncio.to_thread(delete)
        shared["passes"].pop((namespace, name), None)
        logger.info(f"deleted {removed} objects; artifacts stay in the store")

    return shared
