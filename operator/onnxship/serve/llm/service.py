"""One causal LM being served: tokenizer, chat template, limits, and the engine.

The protocol layer hands it token ids or messages with generation settings; it checks them
against the context and the queue, and returns a ``Sequence`` whose events carry the text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import onnxruntime_genai as og

from ..config import ServeConfig
from ..errors import InvalidInput, ServeError, StartupError
from ..metrics import LlmMetrics, ServeMetrics
from ..session import create_session
from . import GENAI_CONFIG
from .engine import Engine, QueueFull, Sequence
from .runtime import DecoderLayout, DecoderRuntime, last_rows_graph
from .sampling import SamplingParams

log = logging.getLogger(__name__)

DEFAULT_MAX_CONTEXT = 4096  # per sequence, when --max-context is 0 (KV memory is per slot)


class TooManyRequests(ServeError):
    """Every slot is busy and the waiting queue is full: retry shortly."""

    http_status = 429
    retry_after = 1


class ContextTooLong(InvalidInput):
    pass


class LlmService:
    def __init__(
        self,
        folder: Path,
        runtime: DecoderRuntime,
        tokenizer: og.Tokenizer,
        defaults: SamplingParams,
        load_seconds: float,
    ) -> None:
        self.folder = folder
        self.runtime = runtime
        self.tokenizer = tokenizer
        self.defaults = defaults
        self.load_seconds = load_seconds
        self.engine: Engine | None = None
        self.created = int(time.time())

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, folder: Path, config: ServeConfig) -> LlmService:
        """Blocking: session, KV buffers, tokenizer, and a warm-up of one short generation."""
        start = time.perf_counter()
        genai = _read_config(folder)
        filename = genai["model"]["decoder"].get("filename", "model.onnx")
        model_file = (folder / filename).resolve()
        if not isinstance(filename, str) or model_file.parent != folder.resolve():
            raise StartupError(
                f"{folder / GENAI_CONFIG}: decoder.filename {filename!r} must name a file in "
                "the model folder",
                kind="invalid_model",
            )
        session, last_rows = _session(model_file, config, genai)
        try:
            layout = DecoderLayout.read(folder, session)
            tokenizer = og.Tokenizer(str(folder))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise StartupError(
                f"{folder}: not a usable ONNX Runtime GenAI folder: {exc}", kind="invalid_model"
            ) from exc
        max_len = min(layout.context, config.max_context or DEFAULT_MAX_CONTEXT)
        runtime = DecoderRuntime(session, layout, config.max_sequences, max_len, last_rows)
        search = genai.get("search", {})
        defaults = SamplingParams(
            temperature=float(search.get("temperature", 1.0)) if search.get("do_sample") else 0.0,
            top_p=float(search.get("top_p", 1.0)),
            top_k=int(search.get("top_k", 0)) if search.get("do_sample") else 0,
        )
        service = cls(folder, runtime, tokenizer, defaults, 0.0)
        if config.warmup:
            try:
                service._warm_up()
            except Exception as exc:  # ORT's own types: a graph that loads but cannot run
                raise StartupError(
                    f"{folder}: the warm-up generation failed: {exc}", kind="invalid_model"
                ) from exc
        service.load_seconds = time.perf_counter() - start
        return service

    def _warm_up(self) -> None:
        """One short generation (a prompt, then a few decode steps on every slot's rows), so
        the first user does not pay for ORT's first runs and the pages of the weights."""
        ids = [int(t) for t in self.tokenizer.encode("Hello")] or [self.runtime.layout.pad]
        logits = self.runtime.prefill(0, ids)
        token, length = int(np.argmax(logits)), len(ids)
        for _ in range(3):
            logits = self.runtime.decode(1, np.array([token]), np.array([length]))
            token, length = int(np.argmax(logits[0])), length + 1

    def start(self, config: ServeConfig, metrics: ServeMetrics) -> None:
        llm_metrics = LlmMetrics(metrics)
        llm_metrics.capacity(self.runtime.kv_bytes)
        self.engine = Engine(
            self.runtime,
            max_queue=config.max_queue_size,
            metrics=llm_metrics,
            loop=asyncio.get_running_loop(),
        )
        self.engine.start()

    def close(self) -> None:
        if self.engine is not None:
            self.engine.stop()

    # ------------------------------------------------------------------ requests

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        try:
            text = self.tokenizer.apply_chat_template(
                json.dumps(messages), add_generation_prompt=True
            )
        except RuntimeError as exc:
            raise InvalidInput(f"messages: the model's chat template failed: {exc}") from None
        return self.encode(text)

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def submit(
        self,
        prompt: list[int],
        *,
        max_tokens: int | None,
        sampling: SamplingParams,
        stop: tuple[str, ...] = (),
        min_tokens: int = 0,
    ) -> Sequence:
        """Check the request against the context and queue it; 400 or 429 otherwise."""
        assert self.engine is not None
        context = self.runtime.max_len
        if not prompt:
            raise InvalidInput("the prompt is empty")
        vocab = self.runtime.layout.vocab
        if max(prompt) >= vocab:  # one bad id would fail the whole batch's step
            raise InvalidInput(
                f"prompt: token id {max(prompt)} is not in the vocabulary (0..{vocab - 1})"
            )
        if len(prompt) >= context:
            raise ContextTooLong(
                f"the prompt is {len(prompt)} tokens; this model's context is {context} tokens "
                "(prompt and answer together): shorten the prompt"
            )
        room = context - len(prompt)
        if max_tokens is not None and max_tokens > room:
            raise ContextTooLong(
                f"max_tokens is {max_tokens} but the prompt ({len(prompt)} tokens) leaves "
                f"{room} of this model's context of {context} tokens: ask for at most {room}"
            )
        seq = Sequence(
            prompt=prompt,
            max_tokens=max_tokens or room,
            sampling=sampling,
            stop=stop,
            min_tokens=min_tokens,
            detokenizer=self.tokenizer.create_stream,
        )
        try:
            self.engine.submit(seq)
        except QueueFull as exc:
            raise TooManyRequests(
                f"the server is at capacity ({self.runtime.slots} sequences running, "
                f"{exc.waiting} waiting); retry shortly"
            ) from None
        return seq

    def cancel(self, seq: Sequence) -> None:
        assert self.engine is not None
        self.engine.cancel(seq)

    def metadata(self, name: str, version: str) -> dict[str, Any]:
        return {
            "name": name,
            "versions": [version],
            "platform": "onnxruntime_genai",
            "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1]}],
            "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [1]}],
            "parameters": {"max_context": self.runtime.max_len, "slots": self.runtime.slots},
        }


def _session(
    model_file: Path, config: ServeConfig, genai: dict[str, Any]
) -> tuple[ort.InferenceSession, bool]:
    """The decoder's session, with the logits cut to the rows read when the graph allows
    (``last_rows_graph``); whether it is."""
    logits = genai["model"]["decoder"].get("outputs", {}).get("logits", "logits")
    try:
        cut = last_rows_graph(model_file, str(logits))
    except Exception as exc:  # onnx's own errors for a file it cannot parse
        log.warning("%s: logits of every position (the graph did not parse: %s)", model_file, exc)
        cut = None
    if cut is None:
        return create_session(model_file, config), False
    try:
        return create_session(model_file, config, graph=cut), True
    except StartupError as exc:
        log.warning("%s: logits of every position (the cut graph did not load: %s)",
                    model_file, exc)  # fmt: skip
    return create_session(model_file, config), False


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / GENAI_CONFIG
    try:
        doc = json.loads(path.read_text())
        dec = doc["model"]["decoder"]
        for key in ("num_hidden_layers", "num_key_value_heads", "head_size"):
            value = dec[key]
            if not isinstance(value, int) or not 0 < value <= 1 << 16:
                raise ValueError(f"decoder.{key} must be a positive integer, got {value!r}")
        vocab = doc["model"]["vocab_size"]
        if not isinstance(vocab, int) or not 0 < vocab <= 1 << 24:
            raise ValueError(f"model.vocab_size must be a positive integer, got {vocab!r}")
        ctx = doc["model"].get("context_length", 0)
        if not isinstance(ctx, int) or not 0 < ctx <= 1 << 24:
            raise ValueError(f"model.context_length must be a positive integer, got {ctx!r}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StartupError(f"{path}: {exc!r}", kind="invalid_model") from exc
    return dict(doc)
