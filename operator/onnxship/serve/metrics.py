"""Prometheus metrics of one server, in a registry of its own (no process-global state).

With worker processes (serve/workers.py) every worker writes its values to memory-mapped
files in the pod's private ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess
mode, chosen when the worker's interpreter starts), and whichever worker answers ``/metrics``
reads them all: one view of the pod, the same names and labels as one process. Counters and
histograms add up; each gauge says how its workers' values combine (``multiprocess_mode``,
ignored by a single process).
"""

from __future__ import annotations

import bisect
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Latency buckets from 1 ms to 10 s: CPU inference of small models lives in the low
# milliseconds, and the analysis reads p99 against limits of tens to hundreds of ms.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServeMetrics:
    def __init__(self, model: str, version: str, multiprocess_dir: Path | None = None) -> None:
        """``multiprocess_dir``: the pod's metrics folder when this is one of its workers."""
        self.registry = CollectorRegistry(auto_describe=True)
        self._pod_registry: CollectorRegistry | None = None
        if multiprocess_dir is not None:
            self._pod_registry = CollectorRegistry()
            MultiProcessCollector(self._pod_registry, path=str(multiprocess_dir))
        labels = ["model", "version"]
        self._requests = Counter(
            "onnxship_inference_requests",
            # One label for both transports: a gRPC request is counted with the HTTP status its
            # error maps to (errors.py), so an error rate reads the same whichever came in.
            "Inference requests by result; code is the HTTP status (gRPC codes mapped to it).",
            [*labels, "code"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "onnxship_inference_request_duration_seconds",
            "Time from receiving a successful inference request to its answer.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        ).labels(model, version)
        self._batch = Histogram(
            "onnxship_inference_batch_size",
            "Rows per ONNX Runtime run (1 without dynamic batching).",
            labels,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        ).labels(model, version)
        self._queue = Gauge(
            "onnxship_inference_queue_depth",
            "Requests admitted and not yet answered.",
            labels,
            multiprocess_mode="livesum",
            registry=self.registry,
        ).labels(model, version)
        self._in_flight = Gauge(
            "onnxship_inference_in_flight",
            "Inference requests being handled (decoding, queued, running, encoding).",
            labels,
            multiprocess_mode="livesum",
            registry=self.registry,
        ).labels(model, version)
        self._load = Gauge(
            "onnxship_model_load_seconds",
            "Seconds to fetch, load and warm up the model.",
            labels,
            multiprocess_mode="max",
            registry=self.registry,
        ).labels(model, version)
        self._ready = Gauge(
            "onnxship_model_ready",
            "1 when the model answers requests.",
            labels,
            multiprocess_mode="livemin",
            registry=self.registry,
        ).labels(model, version)
        self._model, self._version = model, version
        self._by_code: dict[int, Counter] = {}

    def request(self, code: int, seconds: float) -> None:
        counter = self._by_code.get(code)
        if counter is None:
            counter = self._by_code[code] = self._requests.labels(
                self._model, self._version, str(code)
            )
        counter.inc()
        if code == 200:
            self._duration.observe(seconds)

    def batch(self, rows: int) -> None:
        self._batch.observe(rows)

    def requests(self, counts: dict[int, int], durations: list[float]) -> None:
        """``request`` for many requests at once: requests by code, and the durations of the
        successful ones. The data plane writes once per turn of the event loop (a write in
        multiprocess mode is a locked store into a memory-mapped file, 3-6 us)."""
        for code, n in counts.items():
            counter = self._by_code.get(code)
            if counter is None:
                counter = self._by_code[code] = self._requests.labels(
                    self._model, self._version, str(code)
                )
            counter.inc(n)
        _observe_many(self._duration, durations)

    def batches(self, rows: list[int]) -> None:
        """``batch`` for many runs at once."""
        _observe_many(self._batch, rows)

    def queue_depth(self, depth: int) -> None:
        self._queue.set(depth)

    def in_flight(self, delta: int) -> None:
        self._in_flight.inc(delta)

    def loaded(self, seconds: float) -> None:
        self._load.set(seconds)

    def ready(self, ready: bool) -> None:
        self._ready.set(1 if ready else 0)

    def exposition(self) -> bytes:
        return generate_latest(self._pod_registry or self.registry)


def _observe_many(histogram: Histogram, values: list[float] | list[int]) -> None:
    """``histogram.observe(v)`` for each value, with one write per bucket it touches and one
    for the sum (prometheus_client's buckets, not cumulative inside, as ``observe`` fills)."""
    if not values:
        return
    try:
        bounds, buckets, total = histogram._upper_bounds, histogram._buckets, histogram._sum
    except AttributeError:  # another prometheus_client inside: one observation at a time
        for v in values:
            histogram.observe(v)
        return
    counts: dict[int, int] = {}
    for v in values:
        i = bisect.bisect_left(bounds, v)  # the first bound >= v, as observe's `v <= bound`
        counts[i] = counts.get(i, 0) + 1
    total.inc(sum(values))
    for i, n in counts.items():
        buckets[i].inc(n)


# Generation: first tokens take a prompt's run (tens of ms to seconds), whole answers up to
# minutes; inter-token gaps are one decode step (ms to hundreds of ms).
GENERATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_GAP_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


class LlmMetrics:
    """A causal LM's generation metrics, in the server's registry beside the ones above.

    The ``vllm:*`` gauges are what the Kubernetes Gateway API Inference Extension's
    model-server protocol reads (its reference names are vLLM's), so an inference gateway
    (llm-d, KServe's) can route to these pods by queue length and KV cache use.
    """

    def __init__(self, metrics: ServeMetrics) -> None:
        reg, labels = metrics.registry, ["model", "version"]
        values = (metrics._model, metrics._version)

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=reg).labels(*values)

        def gauge(
            name: str, doc: str, names: list[str] = labels, mode: str = "livesum"
        ) -> Gauge:
            value = values if names is labels else (metrics._model,)
            return Gauge(name, doc, names, registry=reg, multiprocess_mode=mode).labels(*value)

        self._ttft = hist(
            "onnxship_llm_time_to_first_token_seconds",
            "From a generation request's arrival to its first token.",
            GENERATION_BUCKETS,
        )
        self._itl = hist(
            "onnxship_llm_inter_token_latency_seconds",
            "Between two tokens of one sequence.",
            TOKEN_GAP_BUCKETS,
        )
        self._e2e = hist(
            "onnxship_llm_e2e_request_latency_seconds",
            "From a generation request's arrival to its last token.",
            GENERATION_BUCKETS,
        )
        self._queue = hist(
            "onnxship_llm_queue_time_seconds",
            "From arrival until its prompt starts running.",
            GENERATION_BUCKETS,
        )
        self._prompt = Counter(
            "onnxship_llm_prompt_tokens", "Prompt tokens run.", labels, registry=reg
        ).labels(*values)
        self._generated = Counter(
            "onnxship_llm_generation_tokens", "Tokens generated.", labels, registry=reg
        ).labels(*values)
        self._finished = Counter(
            "onnxship_llm_requests",
            "Finished generations by reason (stop, length, abort, error).",
            [*labels, "finish_reason"],
            registry=reg,
        )
        self._steps_after_abort = Counter(
            "onnxship_llm_decode_steps_after_abort",
            "Decode steps run for a sequence after its client went away (at most 1 each).",
            labels,
            registry=reg,
        ).labels(*values)
        self._running = gauge("onnxship_llm_requests_running", "Sequences being generated.")
        self._waiting = gauge("onnxship_llm_requests_waiting", "Requests waiting for a slot.")
        self._kv = gauge(
            "onnxship_llm_kv_cache_usage_ratio",
            "Tokens in the KV cache over its capacity (0-1).",
            mode="livemax",  # the fullest worker's: what an inference gateway must avoid
        )
        self._kv_bytes = gauge("onnxship_llm_kv_cache_bytes", "KV cache capacity in bytes.")
        gw = ["model_name"]
        self._gw_waiting = gauge("vllm:num_requests_waiting", "Requests waiting (GIE).", gw)
        self._gw_running = gauge("vllm:num_requests_running", "Requests running (GIE).", gw)
        self._gw_kv = gauge("vllm:kv_cache_usage_perc", "KV cache usage, 0-1 (GIE).", gw, "livemax")
        self._values = values

    def queued(self, seconds: float) -> None:
        self._queue.observe(seconds)

    def first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def inter_token(self, seconds: float) -> None:
        self._itl.observe(seconds)

    def finished(self, reason: str, seconds: float, prompt: int, completion: int) -> None:
        self._finished.labels(*self._values, reason).inc()
        self._prompt.inc(prompt)
        self._generated.inc(completion)
        if reason in ("stop", "length"):
            self._e2e.observe(seconds)

    def aborted(self, steps_after: int) -> None:
        self._steps_after_abort.inc(steps_after)

    def occupancy(self, running: int, waiting: int, kv_used: float) -> None:
        self._running.set(running)
        self._gw_running.set(running)
        self._waiting.set(waiting)
        self._gw_waiting.set(waiting)
        self._kv.set(kv_used)
        self._gw_kv.set(kv_used)

    def capacity(self, kv_bytes: int) -> None:
        self._kv_bytes.set(kv_bytes)
