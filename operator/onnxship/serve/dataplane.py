"""The protocol core: the Open Inference Protocol over one ONNX Runtime model.

It knows OIP (model names and versions, tensors, outputs, errors) and ONNX Runtime; it does
not know HTTP or gRPC. The front ends in ``rest.py`` and ``grpc_service.py`` decode their wire
format into ``InferRequest``, call ``infer``, and encode the ``InferResult``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxship import __version__

from . import tensors
from .batcher import Scheduler
from .config import ServeConfig
from .errors import InvalidInput, ModelNotFound, NotReady, ServeError
from .llm import causal_lm_folder
from .loader import resolve_model_file
from .metrics import ServeMetrics
from .model import LoadedModel

if TYPE_CHECKING:
    from .llm.service import LlmService

log = logging.getLogger(__name__)

EXTENSIONS = ["binary_tensor_data", "model_metadata", "health"]
PLATFORM = "onnxruntime_onnx"


class State(enum.Enum):
    loading = "loading"
    ready = "ready"
    draining = "draining"
    failed = "failed"


@dataclass
class RequestTensor:
    """An input as it came off the wire: exactly one of ``data`` and ``raw`` is set."""

    name: str
    datatype: str
    shape: Sequence[int]
    data: Any = None  # JSON data (flat or nested) or typed gRPC contents
    raw: bytes | memoryview | None = None  # binary extension / gRPC raw contents


@dataclass
class InferRequest:
    model_name: str
    model_version: str | None
    inputs: list[RequestTensor]
    outputs: list[str] | None = None  # None: every output, in the model's order
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferResult:
    model_name: str
    model_version: str
    id: str | None
    outputs: list[tuple[str, str, np.ndarray]]  # name, OIP datatype, array


class Outcome:
    """One inference request in a front end, from the first byte read to its answer.

    A context manager (``with dataplane.tracking() as outcome``): it counts the request in
    flight (SIGTERM waits for these, including ones still uploading their body) and, at the
    end, records it with ``code``, the HTTP status the front end set (gRPC codes mapped to
    it). A plain class rather than ``contextlib.contextmanager``: this runs on every request,
    and the generator machinery cost more than the counting.
    """

    __slots__ = ("_dp", "code", "started")

    def __init__(self, dataplane: DataPlane) -> None:
        self._dp = dataplane
        self.code = 500
        self.started = 0.0

    def __enter__(self) -> Outcome:
        dp = self._dp
        self.started = time.perf_counter()
        dp.in_flight += 1
        dp._idle.clear()
        dp._tally.changed()
        return self

    def __exit__(self, *exc: object) -> None:
        dp = self._dp
        dp.in_flight -= 1
        if dp.in_flight == 0:
            dp._idle.set()
        dp._tally.request(self.code, time.perf_counter() - self.started)


class _Tally:
    """The request metrics of one turn of the event loop, written to Prometheus at its end.

    Per request the data plane only counts in Python; the counters, histograms and gauges
    are written once per turn in which something changed (``call_soon``: before the loop
    next waits for sockets), whatever the number of requests in it. A write cost 0.7-2.6 us
    in one process and 3.5-6 us in the pod's multiprocess mode (a locked store into a
    memory-mapped file), five of them per request. A scrape, here or in another worker,
    sees a request once the turn that ended it is over.
    """

    def __init__(self, dataplane: DataPlane) -> None:
        self._dp = dataplane
        self._codes: dict[int, int] = {}
        self._durations: list[float] = []  # of successful requests
        self._rows: list[int] = []  # per ONNX Runtime run
        self._depth: int | None = None  # the queue's, when it changed
        self._in_flight = 0  # as the gauge has it
        self._scheduled = False

    def request(self, code: int, seconds: float) -> None:
        self._codes[code] = self._codes.get(code, 0) + 1
        if code == 200:
            self._durations.append(seconds)
        self.changed()

    def batch(self, rows: int) -> None:
        self._rows.append(rows)
        self.changed()

    def depth(self, depth: int) -> None:
        self._depth = depth
        self.changed()

    def changed(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        metrics = self._dp.metrics
        if self._dp.in_flight != self._in_flight:
            metrics.in_flight(self._dp.in_flight - self._in_flight)
            self._in_flight = self._dp.in_flight
        if self._depth is not None:
            metrics.queue_depth(self._depth)
            self._depth = None
        if self._codes:
            codes, durations = self._codes, self._durations
            self._codes, self._durations = {}, []
            metrics.requests(codes, durations)
        if self._rows:
            rows, self._rows = self._rows, []
            metrics.batches(rows)


class DataPlane:
    def __init__(self, config: ServeConfig, metrics: ServeMetrics | None = None) -> None:
        self.config = config
        self.name = config.name
        self.version = config.version
        self.metrics = metrics or ServeMetrics(config.name, config.version)
        self.state = State.loading
        self.model: LoadedModel | None = None
        self.llm: LlmService | None = None  # a causal LM: it generates (serve/llm/)
        self.scheduler: Scheduler | None = None
        self.in_flight = 0
        self._tally = _Tally(self)
        self._idle = asyncio.Event()
        self._idle.set()
        # One thread per instance: ORT releases the GIL, and its intra-op pool already spans
        # the CPUs we have, so more threads than instances would only queue inside ORT.
        self._executor = ThreadPoolExecutor(
            max_workers=config.instances, thread_name_prefix="onnxship-infer"
        )

    # ------------------------------------------------------------------ lifecycle

    async def load(self) -> None:
        """Fetch, load and warm up on a worker thread; the server stays live meanwhile."""
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            path = await loop.run_in_executor(self._executor, resolve_model_file, self.config)
            if (folder := causal_lm_folder(path)) is not None:
                return await self._load_llm(folder, start)
            model = await loop.run_in_executor(self._executor, LoadedModel.load, path, self.config)
        except BaseException:
            self.state = State.failed
            raise
        seconds = time.perf_counter() - start
        self.model = model
        sig = model.signature
        self.scheduler = Scheduler(
            model.run,
            self._executor,
            output_order=model.output_order,
            max_batch_size=self.config.max_batch_size,
            max_delay_s=self.config.max_batch_delay_ms / 1000,
            max_queue_size=self.config.max_queue_size,
            instances=self.config.instances,
            batchable=sig.batchable,
            crop=sig.sequence_axis() if self.config.pad_sequences else None,
            on_batch=self._tally.batch,
            on_depth=self._tally.depth,
        )
        self.scheduler.start()
        if self.config.max_batch_size > 1 and not sig.batchable:
            log.warning("dynamic batching is off: the model has no dynamic batch dimension")
        self.metrics.loaded(seconds)
        self.state = State.ready
        self.metrics.ready(True)
        log.info(
            "model ready",
            extra={
                "model": self.name,
                "version": self.version,
                "path": str(path),
                "load_seconds": round(seconds, 3),
                "batching": self.scheduler.batching,
                "threads": model.session.get_session_options().intra_op_num_threads,
                "warmup": "off"
                if model.warmup is None
                else f"{model.warmup.source} ({'ok' if model.warmup.ok else 'failed'})",
            },
        )

    async def _load_llm(self, folder: Path, start: float) -> None:
        from .llm.service import LlmService  # onnxruntime-genai, only for causal LMs

        loop = asyncio.get_running_loop()
        try:
            llm = await loop.run_in_executor(self._executor, LlmService.load, folder, self.config)
        except BaseException:
            self.state = State.failed
            raise
        llm.start(self.config, self.metrics)
        self.llm = llm
        seconds = time.perf_counter() - start
        self.metrics.loaded(seconds)
        self.state = State.ready
        self.metrics.ready(True)
        rt = llm.runtime
        log.info(
            "model ready",
            extra={
                "model": self.name,
                "version": self.version,
                "kind": "causal-lm",
                "path": str(folder),
                "load_seconds": round(seconds, 3),
                "sequences": rt.slots,
                "context": rt.max_len,
                "kv_cache_bytes": rt.kv_bytes,
                "warmup": "one short generation" if self.config.warmup else "off",
            },
        )

    async def drain(self, grace_s: float) -> bool:
        """Stop taking requests and wait for those in flight; False if the grace ran out."""
        if self.state is State.ready:
            self.state = State.draining
        self.metrics.ready(False)
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        if self.llm is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.llm.close)
        if self.scheduler is not None:
            await self.scheduler.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ health and metadata

    def live(self) -> bool:
        return self.state is not State.failed

    def ready(self) -> bool:
        return self.state is State.ready

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "onnxship", "version": __version__, "extensions": EXTENSIONS}

    def model_ready(self, name: str, version: str | None = None) -> bool:
        self.check_model(name, version)
        return self.ready()

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        self.check_model(name, version)
        if self.llm is not None and self.state is State.ready:
            return self.llm.metadata(self.name, self.version)
        model = self._require_model()
        sig = model.signature
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": PLATFORM,
            "inputs": [s.metadata() for s in sig.inputs.values()],
            "outputs": [s.metadata() for s in sig.outputs.values()],
        }

    # ------------------------------------------------------------------ inference

    async def infer(self, request: InferRequest) -> InferResult:
        self.check_model(request.model_name, request.model_version)
        model = self._require_model()
        assert self.scheduler is not None
        feeds = self._decode_inputs(model, request.inputs)
        outputs = self._select_outputs(model, request.outputs)
        values = await self.scheduler.submit(feeds, outputs)
        sig = model.signature.outputs
        return InferResult(
            self.name,
            self.version,
            request.id,
            [(n, sig[n].datatype, values[n]) for n in outputs],
        )

    def tracking(self) -> Outcome:
        """Around one whole inference request in a front end: see ``Outcome``."""
        return Outcome(self)

    def metrics_text(self) -> bytes:
        """The Prometheus exposition, with this turn's requests in it."""
        self._tally.flush()
        return self.metrics.exposition()

    def admit(self, name: str, version: str | None) -> None:
        """What a request can be refused for before its body is read: an unknown model or
        version (404), not ready (503), a full queue (503)."""
        self.check_model(name, version)
        self._require_model()
        assert self.scheduler is not None
        self.scheduler.check_capacity()

    def check_model(self, name: str, version: str | None) -> None:
        if name != self.name:
            raise ModelNotFound(f"unknown model {name!r}; this server serves {self.name!r}")
        if version and version != self.version:
            raise ModelNotFound(
                f"unknown version {version!r} of model {name!r}; "
                f"this server serves version {self.version!r}"
            )

    def _require_model(self) -> LoadedModel:
        if self.state is State.ready and self.model is not None:
            return self.model
        if self.state is State.ready and self.llm is not None:
            raise InvalidInput(
                f"model {self.name!r} is a causal LM: it generates text; use "
                f"POST /v2/models/{self.name}/generate or /v1/chat/completions"
            )
        if self.state is State.draining:
            raise NotReady("server is shutting down; retry on another replica")
        if self.state is State.failed:
            raise NotReady("model failed to load", retry_after=10)
        raise NotReady(f"model {self.name!r} is loading; retry shortly")

    def _decode_inputs(
        self, model: LoadedModel, inputs: list[RequestTensor]
    ) -> dict[str, np.ndarray]:
        specs = model.signature.inputs
        feeds: dict[str, np.ndarray] = {}
        for tensor in inputs:
            spec = specs.get(tensor.name)
            if spec is None:
                raise InvalidInput(
                    f"unknown input {tensor.name!r}; the model's inputs are "
                    + ", ".join(f"{s.name} ({s.describe()})" for s in specs.values())
                )
            if tensor.name in feeds:
                raise InvalidInput(f"input {tensor.name!r} given more than once")
            shape = tensors.check_header(spec, tensor.datatype, tensor.shape)
            if tensor.raw is not None:
                feeds[tensor.name] = tensors.from_raw(spec, shape, tensor.raw)
            elif tensor.data is not None:
                feeds[tensor.name] = tensors.from_data(spec, shape, tensor.data)
            else:
                raise InvalidInput(f"input {tensor.name!r} has no data")
        if len(feeds) != len(specs):
            missing = [s for n, s in specs.items() if n not in feeds]
            raise InvalidInput(
                "missing input " + ", ".join(f"{s.name!r} ({s.describe()})" for s in missing)
            )
        return feeds

    def _select_outputs(self, model: LoadedModel, names: list[str] | None) -> list[str]:
        if not names:
            return model.output_order
        known = model.signature.outputs
        for n in names:
            if n not in known:
                raise InvalidInput(
                    f"unknown output {n!r}; the model's outputs are {', '.join(known)}"
                )
        if len(set(names)) != len(names):
            raise InvalidInput("an output is requested more than once")
        return list(names)


__all__ = ["DataPlane", "InferRequest", "InferResult", "RequestTensor", "ServeError", "State"]
