"""Prometheus metrics of one server, in a registry of its own (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

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
    def __init__(self, model: str, version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
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
            registry=self.registry,
        ).labels(model, version)
        self._in_flight = Gauge(
            "onnxship_inference_in_flight",
            "Inference requests being handled (decoding, queued, running, encoding).",
            labels,
            registry=self.registry,
        ).labels(model, version)
        self._load = Gauge(
            "onnxship_model_load_seconds",
            "Seconds to fetch, load and warm up the model.",
            labels,
            registry=self.registry,
        ).labels(model, version)
        self._ready = Gauge(
            "onnxship_model_ready",
            "1 when the model answers requests.",
            labels,
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

    def queue_depth(self, depth: int) -> None:
        self._queue.set(depth)

    def in_flight(self, delta: int) -> None:
        self._in_flight.inc(delta)

    def loaded(self, seconds: float) -> None:
        self._load.set(seconds)

    def ready(self, ready: bool) -> None:
        self._ready.set(1 if ready else 0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
