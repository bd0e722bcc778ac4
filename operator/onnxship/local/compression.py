"""The local compression Job: the desired revision's artifacts, compressed in the background.

What the controller's ``_observe_artifacts`` and its compression Jobs are in the cluster:
the spec names a revision; its artifacts are pending while a thread compresses (or finds
them in the store, a cache hit), ready with a record once every environment's artifact is
stored, or failed with the condition reason that says why. An unreachable store is tried
again after STORE_RETRY_SECONDS, like the operator's TemporaryError.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from onnxship.api import Reason, RevisionStatus
from onnxship.plan.compression_jobs import environment_record, revision_record
from onnxship.plan.observed import ArtifactState, DesiredRevision
from onnxship.plan.revision import revision_name

from .events import Say
from .spec import LocalSpec, model_sha256

# Local revisions run this very installation; the hash input stands for "the runtime image".
LOCAL_IMAGE = "local"
STORE_RETRY_SECONDS = 15.0  # an unreachable store is tried again after this long


@dataclass
class CompressionJob:
    revision: str
    future: Future[list[tuple[str, Any]]]
    started: float
    step: str = "starting"


class Compressions:
    """Compression jobs and their outcomes, per revision name."""

    def __init__(self, say: Say) -> None:
        self.say = say
        self.jobs: dict[str, CompressionJob] = {}
        self.desired: dict[str, DesiredRevision] = {}  # revision -> artifacts outcome
        self.failed_at: dict[str, float] = {}  # revision -> when its store was unreachable
        self.cache_hits: list[str] = []
        self.last_name = ""
        self.activity = ""  # e.g. "compressing encoder-1a2b3c (v2): quantize 40%"
        self.problem = ""  # the source model cannot be read (this tick)

    def record_of(self, revision: str) -> RevisionStatus | None:
        desired = self.desired.get(revision)
        return desired.record if desired else None

    def observe(self, local: LocalSpec, now: datetime) -> DesiredRevision:
        """The spec's revision and its artifacts: compress (or find in the cache) as needed."""
        self.problem = ""
        spec = local.spec
        envs = spec.serving.effective_environments()
        try:
            sha = model_sha256(local.model_path) if local.model_path else spec.model.sha256
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
            job = self._start(name, local)
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
            self.say("warning", f"{name}: {message}")
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
        record = _record(name, local, sha, outcomes, now)
        reused = all(getattr(o, "cache_hit", False) for _, o in outcomes)
        if reused:
            self.cache_hits.append(name)
            self.say("info", f"{name}: artifact found in the store (cache hit)")
        else:
            self.say("info", f"{name}: compressed and stored in {time.time() - job.started:.1f}s")
        result = DesiredRevision(
            name, {e.name: ArtifactState.ready for e in envs}, record=record, reused=reused
        )
        self.desired[name] = result
        return result

    def _start(self, name: str, local: LocalSpec) -> CompressionJob:
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
                    model_kind=spec.model.kind,
                )
                outcomes.append((env.name, outcome))
            return outcomes

        self.say("info", f"{name}: compressing {local.spec.model.version or local.spec.model.uri}")
        job = CompressionJob(name, _in_background(run, f"compress {name}"), time.time())
        holder["job"] = job
        self.jobs[name] = job
        return job


def _record(
    name: str, local: LocalSpec, sha: str, outcomes: list[tuple[str, Any]], now: datetime
) -> RevisionStatus:
    """The revision's record from its outcomes, read as the controller reads a Job's result."""
    from onnxship.compress.result import compact_result

    envs = {e.name: e for e in local.spec.serving.effective_environments()}
    statuses = [
        environment_record(
            env_name,
            str(envs[env_name].execution_provider),
            compact_result(
                outcome.manifest,
                outcome.artifact_uri or _manifest_uri(local.store_uri, outcome.manifest.cache_key),
                bool(outcome.cache_hit),
            ),
            reused=False,
        ).model_copy(update={"replicas": 1})
        for env_name, outcome in outcomes
    ]
    sha = sha or (outcomes[0][1].manifest.source.sha256 if outcomes else "")
    return revision_record(name, local.spec, statuses, now, model_sha256=sha)


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
