"""The local driver: observe, plan, apply, with processes instead of pods.

Each tick reads the world (the applied document, commands from other terminals, compression
jobs, child processes, the router's metrics), hands it to ``onnxship.plan.rollout.step`` (the
same function the operator calls) and applies the actions it returns: start or stop an
``onnxship serve`` per revision, write the router's route table, log events. Then it writes
the status to the state folder. It decides nothing about the rollout itself.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from onnxship.api import (
    CompressionSummary,
    EnvironmentStatus,
    ModelDeploymentStatus,
    Reason,
    RevisionStatus,
    SpecError,
)
from onnxship.api.routes import RouteTable
from onnxship.plan.actions import (
    DeleteRevision,
    EmitEvent,
    EnsureRevision,
    ScaleRevision,
    SetTraffic,
)
from onnxship.plan.analysis import AnalysisRequest, Measurements, Verdict, evaluate
from onnxship.plan.observed import (
    ArtifactState,
    Command,
    CommandKind,
    DesiredRevision,
    Observed,
    RevisionPods,
)
from onnxship.plan.revision import revision_name
from onnxship.plan.times import format_time
from onnxship.plan.traffic import TrafficSplit, route_table
from onnxship.router import admin_push
from onnxship.router.metrics_source import Counters, counters_from_text, measurements_between

from . import processes
from .processes import Child
from .spec import LocalSpec, file_sha256, load_document, mtime, parse_local
from .state import AppliedDocument, DeploymentState
from .view import RevisionStats, Snapshot

log = logging.getLogger("onnxship.local")

# Local revisions run this very installation; the hash input stands for "the runtime image".
LOCAL_IMAGE = "local"
RESTART_LIMIT = 3
RETIRE_GRACE = 10.0  # seconds a stopped server gets to finish its requests
STORE_RETRY_SECONDS = 15.0  # an unreachable store is tried again after this long


@dataclass
class UpOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    tick_seconds: float = 0.25
    watch: bool = True  # re-apply the source file when it changes
    serve_threads: int = 0  # 0 = the spec's serving.threads (0 = let the server pick)


@dataclass
class CompressionJob:
    revision: str
    future: Future[list[tuple[str, Any]]]
    started: float
    step: str = "starting"


@dataclass
class Window:
    """One analysis interval: the canary's counters when it opened."""

    request: AnalysisRequest
    opened: float
    baseline: Any


@dataclass
class ServedRevision:
    record: RevisionStatus
    replicas: dict[str, int]
    children: dict[str, Child] = field(default_factory=dict)  # environment -> process
    restarts: int = 0
    failed: str = ""


def now_utc() -> datetime:
    return datetime.now(UTC)


class LocalDriver:
    """Drives one local deployment; ``tick()`` is one reconcile, ``shutdown()`` stops children."""

    def __init__(
        self,
        state: DeploymentState,
        options: UpOptions,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        self.state = state
        self.options = options
        self.on_event = on_event or (lambda kind, text: None)
        self.endpoint = f"http://{options.host}:{options.port}"
        self.status = state.read_status() or ModelDeploymentStatus()
        applied = state.read_applied()
        if applied is None:
            raise SpecError(str(state.deployment_path), ["(file): no deployment was applied"])
        self.applied = applied
        self.local: LocalSpec | None = None
        self.source_mtime = 0.0
        self.problem = ""
        self.activity = ""
        self.events: deque[str] = deque(maxlen=8)
        self.jobs: dict[str, CompressionJob] = {}
        self.desired: dict[str, DesiredRevision] = {}  # revision -> artifacts outcome
        self.served: dict[str, ServedRevision] = {}
        self.router: Child | None = None
        self.routes_path = state.dir / "routes.json"
        self.traffic: TrafficSplit | None = None
        self.admin_url = ""
        self.retiring: list[tuple[Child, float]] = []
        self.admin_token = secrets.token_hex(16)
        self.router_env: dict[str, str] = {}
        self.window: Window | None = None
        self.verdict: Verdict | None = None
        self.commands: deque[Command] = deque()
        self.command_ids = itertools.count()
        self.stats: dict[str, RevisionStats] = {}
        self.cache_hits: list[str] = []
        self.started_at = time.time()
        self.last_name = ""
        self.failed_at: dict[str, float] = {}

    # ================================================================ lifecycle

    def start(self) -> None:
        """Load the spec, start the router, announce ourselves in the state folder."""
        self._reload(initial=True)
        self.routes_path.parent.mkdir(parents=True, exist_ok=True)
        self._write_routes(RouteTable())
        admin_port = processes.free_port()
        self.admin_url = f"http://127.0.0.1:{admin_port}"
        self.router = Child(
            role="router",
            args=[
                *processes.onnxship_command(),
                "route",
                "--host",
                self.options.host,
                "--port",
                str(self.options.port),
                "--routes",
                str(self.routes_path),
                "--admin-port",
                str(admin_port),
                "--watch-interval",
                "0.25",
            ],
            log_path=self.state.logs_dir / "router.log",
            ready_url=f"{self.endpoint}/healthz",
            ports={"http": self.options.port, "admin": admin_port},
        )
        self.router_env = {"ONNXSHIP_ROUTER_TOKEN": self.admin_token}
        self.router.start(self.router_env)
        self._write_runtime(running=True)

    def shutdown(self) -> None:
        """Stop every child; the store and the status stay.

        The router goes first: it stops taking requests and finishes those in flight while
        the servers behind it still answer; then the servers stop with nothing to drain.
        """
        if self.router is not None:
            processes.stop_all([self.router])
        children = [c for s in self.served.values() for c in s.children.values()]
        processes.stop_all(children + [c for c, _ in self.retiring])
        self.state.write_status(self.status)
        self._write_runtime(running=False)

    # ================================================================ one reconcile

    def tick(self) -> None:
        now = now_utc()
        self._take_commands()
        if self.options.watch:
            self._watch_source()
        self._check_router()
        self._reap()
        observed = self._observe(now)
        from onnxship.plan.rollout import step

        spec = self.local.spec if self.local else None
        if spec is None:
            return
        decision = step(spec, self.status, observed, now)
        for action in decision.actions:
            self._apply(action)
        self._analysis(decision.analysis, now)
        status = decision.status
        if status.endpoint != self.endpoint:
            status = status.model_copy(update={"endpoint": self.endpoint})
        if status != self.status:
            self._announce(self.status, status)
            self.status = status
            self.state.write_status(status)
        if observed.command is not None and status.last_command == observed.command.id:
            self.commands.popleft()  # handled (or rejected, with an event saying why)
        self._refresh_stats()
        self._write_runtime(running=True)

    # ================================================================ observe

    def _observe(self, now: datetime) -> Observed:
        desired = self._desired()
        pods = {}
        for rev, served in self.served.items():
            self._supervise(rev, served)
            ready = bool(served.children) and all(c.probe(0.5) for c in served.children.values())
            pods[rev] = RevisionPods(
                replicas=dict(served.replicas), ready=ready and not served.failed
            )
        command = self.commands[0] if self.commands else None
        return Observed(
            desired=desired,
            generation=self.applied.generation,
            revisions=pods,
            traffic=self.traffic,
            verdict=self.verdict,
            command=command,
        )

    def _desired(self) -> DesiredRevision:
        """The spec's revision and its artifacts: compress (or find in the cache) as needed."""
        local = self.local
        assert local is not None
        spec = local.spec
        envs = spec.serving.effective_environments()
        try:
            sha = file_sha256(local.model_path) if local.model_path else spec.model.sha256
        except OSError as exc:
            # The file went away under us: keep serving what we have and say why.
            self.problem = f"spec.model.uri: cannot read {local.model_path}: {exc.strerror}"
            if self.last_name in self.desired:
                return self.desired[self.last_name]
            return DesiredRevision(
                self.last_name or local.name, {e.name: ArtifactState.pending for e in envs}
            )
        name = revision_name(local.name, spec, sha, spec.serving.image or LOCAL_IMAGE)
        self.last_name = name
        failed_at = self.failed_at.get(name)
        if failed_at is not None and time.monotonic() - failed_at > STORE_RETRY_SECONDS:
            # The store was unreachable: try again, like the operator's TemporaryError.
            self.desired.pop(name, None)
            del self.failed_at[name]
        if name in self.desired:
            return self.desired[name]
        job = self.jobs.get(name)
        if job is None:
            job = self._start_compression(name, local, sha)
        if not job.future.done():
            self.activity = (
                f"compressing {name} ({local.spec.model.version or 'model'}): {job.step}"
            )
            return DesiredRevision(name, {e.name: ArtifactState.pending for e in envs})
        self.activity = ""
        del self.jobs[name]
        try:
            outcomes = job.future.result()
        except Exception as exc:  # compression is I/O and user input: every failure is reported
            reason, message = _failure(exc)
            self._event("warning", f"{name}: {message}")
            result = DesiredRevision(
                name,
                {e.name: ArtifactState.failed for e in envs},
                failure_reason=reason,
                failure_message=message,
            )
            self.desired[name] = result
            if reason == str(Reason.store_unavailable):
                self.failed_at[name] = time.monotonic()
            return result
        record = self._record(name, local, sha, outcomes, time.time() - job.started)
        reused = all(getattr(o, "cache_hit", False) for _, o in outcomes)
        if reused:
            self.cache_hits.append(name)
            self._event("info", f"{name}: artifact found in the store (cache hit)")
        else:
            self._event(
                "info", f"{name}: compressed and stored in {time.time() - job.started:.1f}s"
            )
        result = DesiredRevision(
            name, {e.name: ArtifactState.ready for e in envs}, record=record, reused=reused
        )
        self.desired[name] = result
        return result

    def _start_compression(self, name: str, local: LocalSpec, sha: str) -> CompressionJob:
        holder: dict[str, CompressionJob] = {}

        def progress(task: str, done: int, total: int | None) -> None:
            job = holder.get("job")
            if job is not None:
                job.step = task if not total or done >= total else f"{task} {done * 100 // total}%"

        def run() -> list[tuple[str, Any]]:
            from onnxship.compress import compress
            from onnxship.store import open_store

            spec = local.spec
            store = open_store(
                local.store_uri, endpoint=spec.artifacts.endpoint, region=spec.artifacts.region
            )
            outcomes = []
            for env in spec.serving.effective_environments():
                outcome = compress(
                    spec.model.uri,
                    spec.compression_for(env),
                    store,
                    sample_inputs=spec.model.sample_inputs,
                    execution_provider=str(env.execution_provider),
                    expected_sha256=spec.model.sha256,
                    progress=progress,
                    model_version=spec.model.version,
                )
                outcomes.append((env.name, outcome))
            return outcomes

        self._event(
            "info", f"{name}: compressing {local.spec.model.version or local.spec.model.uri}"
        )
        job = CompressionJob(name, _in_background(run, f"compress {name}"), time.time())
        holder["job"] = job
        self.jobs[name] = job
        return job

    def _record(
        self, name: str, local: LocalSpec, sha: str, outcomes: list[tuple[str, Any]], seconds: float
    ) -> RevisionStatus:
        spec = local.spec
        envs = {e.name: e for e in spec.serving.effective_environments()}
        statuses = []
        for env_name, outcome in outcomes:
            m = outcome.manifest
            report = m.report
            acc = report.accuracy
            statuses.append(
                EnvironmentStatus(
                    name=env_name,
                    execution_provider=str(envs[env_name].execution_provider),
                    cache_key=m.cache_key,
                    artifact_uri=getattr(outcome, "artifact_uri", "")
                    or _manifest_uri(local.store_uri, m.cache_key),
                    replicas=1,
                    compression=CompressionSummary(
                        original_bytes=report.original_bytes,
                        compressed_bytes=report.compressed_bytes,
                        ratio=report.ratio,
                        accuracy_metric=acc.metric if acc else "",
                        accuracy=acc.mean if acc else None,
                        cache_hit=bool(outcome.cache_hit),
                    ),
                )
            )
        first = statuses[0].compression if statuses else None
        return RevisionStatus(
            name=name,
            model_version=spec.model.version,
            model_sha256=sha or (outcomes[0][1].manifest.source.sha256 if outcomes else ""),
            artifact_uri=statuses[0].artifact_uri if statuses else "",
            size_bytes=first.compressed_bytes if first else 0,
            compression_ratio=first.ratio if first else 0.0,
            accuracy=first.accuracy if first else None,
            environments=statuses,
            created_at=format_time(now_utc()),
        )

    # ================================================================ apply

    def _apply(self, action: object) -> None:
        if isinstance(action, EnsureRevision):
            self._ensure(action.revision, dict(action.replicas), action.record)
        elif isinstance(action, ScaleRevision):
            served = self.served.get(action.revision)
            if served is None:
                self._ensure(action.revision, dict(action.replicas), None)
            else:
                served.replicas = dict(action.replicas)
                self._converge(action.revision, served)
        elif isinstance(action, DeleteRevision):
            served = self.served.pop(action.revision, None)
            if served is not None:
                for child in served.children.values():
                    self._retire(child)
                self._event("info", f"{action.revision}: stopped")
        elif isinstance(action, SetTraffic):
            self._set_traffic(action.split)
        elif isinstance(action, EmitEvent):
            self._event("warning" if action.type == "Warning" else "info", action.message)

    def _ensure(
        self, revision: str, replicas: dict[str, int], record: RevisionStatus | None
    ) -> None:
        served = self.served.get(revision)
        if served is None:
            record = record or self._known_record(revision)
            if record is None:
                self._event("warning", f"{revision}: no artifact record, cannot start it")
                return
            served = ServedRevision(record=record, replicas=replicas)
            self.served[revision] = served
        else:
            served.replicas = replicas
        self._converge(revision, served)

    def _known_record(self, revision: str) -> RevisionStatus | None:
        for rec in self.status.revisions:
            if rec.name == revision:
                return rec
        desired = self.desired.get(revision)
        return desired.record if desired else None

    def _converge(self, revision: str, served: ServedRevision) -> None:
        """One `onnxship serve` per environment with replicas > 0 (local mode runs one each)."""
        for env in served.record.environments:
            want = served.replicas.get(env.name, 0) > 0
            child = served.children.get(env.name)
            if want and child is None:
                served.children[env.name] = self._start_server(revision, served.record, env)
            elif not want and child is not None:
                self._retire(child)
                del served.children[env.name]

    def _start_server(self, revision: str, record: RevisionStatus, env: EnvironmentStatus) -> Child:
        assert self.local is not None
        spec = self.local.spec
        http_port, grpc_port = processes.free_port(), processes.free_port()
        args = [
            *processes.onnxship_command(),
            "serve",
            "--store",
            self.local.store_uri,
            "--cache-key",
            env.cache_key,
            "--name",
            self.local.name,
            "--model-version",
            record.model_version or revision,
            "--cache-dir",
            str(self.state.root / "cache"),  # a folder per cache key inside
            "--host",
            self.options.host,
            "--http-port",
            str(http_port),
            "--grpc-port",
            str(grpc_port),
            "--max-batch-size",
            str(spec.serving.batching.max_batch_size),
            "--max-batch-delay-ms",
            str(spec.serving.batching.max_delay_ms),
        ]
        if spec.artifacts.endpoint:
            args += ["--store-endpoint", spec.artifacts.endpoint]
        if spec.artifacts.region:
            args += ["--store-region", spec.artifacts.region]
        threads = self.options.serve_threads or spec.serving.threads
        if threads:
            args += ["--threads", str(threads)]
        if spec.serving.instances > 1:
            args += ["--instances", str(spec.serving.instances)]
        if env.execution_provider and env.execution_provider != "CPU":
            args += ["--execution-provider", env.execution_provider]
        child = Child(
            role=f"serve {revision}/{env.name}",
            args=args,
            log_path=self.state.logs_dir / f"{revision}-{env.name}.log",
            ready_url=f"http://{self.options.host}:{http_port}/v2/health/ready",
            ports={"http": http_port, "grpc": grpc_port},
        )
        child.start()
        where = f" for {env.name}" if len(record.environments) > 1 else ""
        self._event(
            "info", f"{revision}: starting server{where} on :{http_port} ({record.model_version})"
        )
        return child

    def _retire(self, child: Child) -> None:
        """SIGTERM now (the server drains its requests); SIGKILL later if it lingers.

        The loop does not wait: the live view, commands and analysis go on meanwhile.
        """
        child.signal(signal.SIGTERM)
        self.retiring.append((child, time.monotonic() + RETIRE_GRACE))

    def _reap(self) -> None:
        still = []
        for child, deadline in self.retiring:
            if not child.alive():
                continue
            if time.monotonic() > deadline:
                child.signal(signal.SIGKILL)
            still.append((child, deadline))
        self.retiring = still

    def _supervise(self, revision: str, served: ServedRevision) -> None:
        """Restart a server that died, like a pod's restart policy, up to RESTART_LIMIT times."""
        for env_name, child in list(served.children.items()):
            code = child.exit_code()
            if code is None:
                continue
            tail = child.log_tail(5)
            if served.restarts >= RESTART_LIMIT:
                if not served.failed:
                    served.failed = f"{revision}: server exited with {code} {served.restarts} times"
                    self._event("warning", f"{served.failed}; last lines:\n{tail}")
                continue
            served.restarts += 1
            self._event("warning", f"{revision}: server exited with {code}, restarting")
            env = next(e for e in served.record.environments if e.name == env_name)
            served.children[env_name] = self._start_server(revision, served.record, env)

    def _set_traffic(self, split: TrafficSplit) -> None:
        """Write the split into the router, once the servers it sends traffic to can answer.

        Like a Service that lists only ready endpoints: a revision that takes a share (or
        copies) must have been ready once; until then the plan's request waits, and the
        plan asks again on the next tick because the observed traffic has not changed.
        """
        envs = self.local.spec.serving.effective_environments() if self.local else []
        named = len(envs) > 1  # one environment: backends carry none, as in the cluster
        env_weights = {e.name: e.weight for e in envs if e.weight is not None} if named else {}
        urls = {}
        for revision, weight in split.weights:
            served = self.served.get(revision)
            if served is None:
                continue
            takes_traffic = weight > 0 or revision == split.mirror_revision
            if takes_traffic and not all(c.ever_ready for c in served.children.values()):
                return
            for env_name, child in served.children.items():
                urls[(revision, env_name if named else "")] = (
                    f"http://{self.options.host}:{child.ports['http']}"
                )
        try:
            table = route_table(split, urls, env_weights)
        except (KeyError, ValueError) as exc:
            self._event("warning", f"cannot route {split.weights}: {exc}")
            return
        self._write_routes(table)
        self.traffic = split
        parts = ", ".join(f"{r} {w}%" for r, w in split.weights)
        if split.mirror_percent:
            parts += f", mirror {split.mirror_percent}% to {split.mirror_revision}"
        self._event("info", f"traffic: {parts}")

    def _write_routes(self, table: RouteTable) -> None:
        from .state import write_atomic

        text = table.model_dump_json(by_alias=True, exclude_none=True, indent=2)
        write_atomic(self.routes_path, text)
        self._push_routes(text)

    def _push_routes(self, text: str) -> None:
        """The router watches the file; its admin endpoint makes the change immediate."""
        if self.router is None or not self.router.alive():
            return
        try:
            admin_push(self.admin_url, text, self.admin_token, timeout=2.0)
        except OSError as exc:  # the file stays the source of truth; the push is a shortcut
            log.debug("admin push failed: %s", exc)

    def _check_router(self) -> None:
        router = self.router
        if router is None or router.alive():
            return
        self._event(
            "warning", f"router exited with {router.exit_code()}, restarting:\n{router.log_tail(5)}"
        )
        router.start(self.router_env)

    # ================================================================ analysis

    def _analysis(self, request: AnalysisRequest | None, now: datetime) -> None:
        """Measure the canary over each interval the plan asks for, and judge it."""
        if request is None:
            self.window = None
            return
        if self.window is None or self.window.request != request:
            self.window = Window(request, time.monotonic(), self._canary_counters(request))
            return
        if time.monotonic() - self.window.opened < request.interval_seconds:
            return
        counters = self._canary_counters(request)
        measurements = self._measure(
            request, self.window.baseline, counters, time.monotonic() - self.window.opened
        )
        self.window = Window(request, time.monotonic(), counters)
        if measurements is None or self.local is None:
            return
        self.verdict = evaluate(
            self.local.spec.rollout.analysis, measurements, now, request.mirroring
        )

    def _scrape(self) -> str:
        code, body = processes.http_get(f"{self.endpoint}/metrics", timeout=1.0)
        return body.decode(errors="replace") if code == 200 else ""

    def _canary_counters(self, request: AnalysisRequest) -> Counters:
        return counters_from_text(self._scrape(), request.revision)

    def _measure(
        self, request: AnalysisRequest, before: Counters, after: Counters, seconds: float
    ) -> Measurements | None:
        return measurements_between(request.revision, before, after, seconds)

    def _refresh_stats(self) -> None:
        from onnxship.router.metrics_source import revision_stats

        text = self._scrape()
        if not text:
            return
        self.stats = {
            rev: RevisionStats(
                requests=raw["requests"],
                errors=raw["errors"],
                p50_ms=raw["p50_ms"],
                p99_ms=raw["p99_ms"],
                mirrored=raw["mirrored"],
            )
            for rev, raw in revision_stats(text).items()
        }

    # ================================================================ commands and the source file

    def _take_commands(self) -> None:
        for cmd in self.state.take_commands():
            if cmd.kind == "apply":
                doc = cmd.args.get("document")
                base_dir = cmd.args.get("baseDir", ".")
                source = cmd.args.get("source", "")
                self._apply_document(doc, Path(base_dir), source)
                continue
            kind = CommandKind(cmd.kind)
            self.commands.append(
                Command(
                    id=f"{int(cmd.issued_at * 1000)}-{next(self.command_ids)}",
                    kind=kind,
                    revision=str(cmd.args.get("revision", "")),
                )
            )
            self._event("info", f"command: {cmd.kind} {cmd.args.get('revision', '')}".rstrip())

    def _watch_source(self) -> None:
        source = self.applied.source
        if not source:
            return
        path = Path(source)
        current = mtime(path)
        if current == self.source_mtime or current == 0.0:
            return
        self.source_mtime = current
        try:
            doc = load_document(path)
        except SpecError as exc:
            self.problem = str(exc)
            return
        if doc != self.applied.document:
            self._apply_document(doc, path.parent.resolve(), str(path))

    def _apply_document(self, doc: Any, base_dir: Path, source: str) -> None:
        """A new document from the watched file or `onnxship apply`: validate, then adopt."""
        try:
            local = parse_local(doc, base_dir, self.state.root, source or "the applied document")
        except SpecError as exc:
            self.problem = str(exc)
            self._event("warning", f"not applied: {exc}")
            return
        if local.name != self.state.name:
            self.problem = (
                f"{source}: metadata.name is {local.name!r}, but this `up` drives "
                f"{self.state.name!r}; run a second `onnxship up` for another deployment"
            )
            return
        self.problem = ""
        if doc == self.applied.document and local == self.local:
            return
        self.applied = AppliedDocument(doc, str(base_dir), source, self.applied.generation + 1)
        self.state.write_applied(self.applied)
        if source:
            self.source_mtime = mtime(Path(source))
        self.local = local
        self._event(
            "info", f"applied {source or 'a new spec'} (generation {self.applied.generation})"
        )
        self._note_differences()

    def _reload(self, initial: bool = False) -> None:
        applied = self.applied
        self.local = parse_local(
            applied.document,
            Path(applied.base_dir),
            self.state.root,
            applied.source or "deployment",
        )
        if applied.source:
            self.source_mtime = mtime(Path(applied.source))
        self._note_differences()

    def _note_differences(self) -> None:
        """Say once what local mode does differently from the cluster for this spec."""
        if self.local is None:
            return
        spec = self.local.spec
        notes = []
        if spec.rollout.analysis.provider != "builtin":
            notes.append("analysis reads the local router's metrics, not Prometheus")
        if spec.rollout.traffic.router != "builtin":
            notes.append("traffic goes through the local router, not Gateway API")
        if any(
            r > 1
            for r in (spec.serving.replicas, *(e.replicas or 0 for e in spec.serving.environments))
        ):
            notes.append("one server process per environment, whatever serving.replicas says")
        if spec.artifacts.credentials_secret or spec.model.credentials_secret:
            notes.append(
                "credentialsSecret is a cluster Secret: credentials come from this shell's "
                "environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE)"
            )
        for note in notes:
            self._event("info", f"local mode: {note}")

    # ================================================================ reporting

    def report(self, kind: str, text: str) -> None:
        """An event for the user: the live view, the plain output, `onnxship status`."""
        self._event(kind, text)

    def _event(self, kind: str, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.events.append(f"{stamp} {text}")
        (log.warning if kind == "warning" else log.info)(text)
        self.on_event(kind, text)

    def _announce(self, old: ModelDeploymentStatus, new: ModelDeploymentStatus) -> None:
        """One line per change a user cares about: phase, step, weights, message."""
        keys = ("phase", "current_step", "canary_weight", "mirror_percent", "stable_revision",
                "canary_revision", "message")  # fmt: skip
        if all(getattr(old, k) == getattr(new, k) for k in keys):
            return
        self._event("status", f"{new.phase}: {new.message}" if new.message else str(new.phase))

    def processes_view(self) -> dict[str, str]:
        out = {}
        for rev, served in self.served.items():
            if served.failed:
                out[rev] = "failed"
                continue
            states = [
                ("ready" if child.ready else "starting") + f" :{child.ports['http']}"
                for child in served.children.values()
            ]
            out[rev] = ", ".join(states) or "stopped"
        return out

    def snapshot(self) -> Snapshot:
        return Snapshot(
            name=self.state.name,
            status=self.status,
            spec=self.local.spec if self.local else None,
            endpoint=self.endpoint,
            running=True,
            stats=dict(self.stats),
            processes=self.processes_view(),
            activity=self.activity,
            problem=self.problem,
            events=list(self.events)[-6:],
        )

    def _write_runtime(self, running: bool) -> None:
        import os

        self.state.write_runtime(
            {
                "running": running,
                "pid": os.getpid(),
                "endpoint": self.endpoint,
                "startedAt": self.started_at,
                "updatedAt": time.time(),
                "source": self.applied.source,
                "generation": self.applied.generation,
                "routerPid": self.router.pid if self.router else 0,
                "processes": self.processes_view(),
                "pids": [
                    c.pid for s in self.served.values() for c in s.children.values() if c.alive()
                ]
                + [c.pid for c, _ in self.retiring if c.alive()]
                + ([self.router.pid] if self.router and self.router.alive() else []),
                "stats": {rev: st.to_json() for rev, st in self.stats.items()},
                "cacheHits": list(self.cache_hits),
                "activity": self.activity,
                "problem": self.problem,
                "events": list(self.events),
            }
        )


def _in_background(fn: Callable[[], Any], name: str) -> Future[Any]:
    """Run ``fn`` on a daemon thread: Ctrl-C never waits for a compression to finish (the
    store publishes atomically, so an abandoned one leaves no manifest behind)."""
    future: Future[Any] = Future()

    def target() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:  # handed to the driver, which reports it
            future.set_exception(exc)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


def _manifest_uri(store_uri: str, cache_key: str) -> str:
    return f"{store_uri.rstrip('/')}/manifests/{cache_key}.json"


def _failure(exc: BaseException) -> tuple[str, str]:
    """The condition reason and message for a failed compression."""
    from onnxship.compress import AccuracyGateError, InvalidModelError, StoreError

    if isinstance(exc, AccuracyGateError):
        return str(Reason.accuracy_gate_failed), str(exc)
    if isinstance(exc, InvalidModelError):
        return str(Reason.invalid_model), str(exc)
    if isinstance(exc, StoreError):
        return str(Reason.store_unavailable), str(exc)
    return str(Reason.compression_failed), str(exc) or type(exc).__name__
