"""The iteration-level scheduler: requests join and leave the running batch at every step.

One thread owns the decoder. Each turn of its loop it (1) frees the slots of finished and
abandoned sequences, (2) gives free slots to waiting requests, (3) runs prompts, in chunks of
at most ``PREFILL_CHUNK`` tokens and ``PREFILL_BUDGET`` tokens a turn, oldest first, and
(4) runs one decode step for all sequences past their prompt together. A new request
therefore waits at most for the step in progress (plus the prompt chunks ahead of it), never
for the batch to end; a long prompt delays running sequences by one budget per step, not by
its whole length; a client that went away costs at most the step already running.

The event loop talks to the thread through ``submit`` (bounded queue: full means refused at
once) and ``cancel``; the thread hands tokens back with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .runtime import DecoderRuntime
from .sampling import SamplingParams, pick

log = logging.getLogger(__name__)

PREFILL_CHUNK = 256  # tokens of one prompt per run: bounds the logits' memory
PREFILL_BUDGET = 512  # prompt tokens per turn, across sequences, before a decode step


class Detokenizer(Protocol):
    def decode(self, token: int) -> str: ...


@dataclass(frozen=True)
class Delta:
    """New text of one sequence (may be empty while a stop string could still match)."""

    text: str


@dataclass(frozen=True)
class Finished:
    reason: str  # "stop" (EOS or a stop string), "length" (max_tokens), "abort", "error"
    prompt_tokens: int
    completion_tokens: int
    text: str = ""  # the last text held back, if any
    error: str | None = None


Event = Delta | Finished


class QueueFull(Exception):
    def __init__(self, waiting: int) -> None:
        super().__init__(f"{waiting} requests are already waiting")
        self.waiting = waiting


class EngineMetrics(Protocol):
    def queued(self, seconds: float) -> None: ...
    def first_token(self, seconds: float) -> None: ...
    def inter_token(self, seconds: float) -> None: ...
    def finished(self, reason: str, seconds: float, prompt: int, completion: int) -> None: ...
    def occupancy(self, running: int, waiting: int, kv_used: float) -> None: ...
    def aborted(self, steps_after: int) -> None: ...


@dataclass(eq=False)
class Sequence:
    prompt: list[int]
    max_tokens: int
    sampling: SamplingParams
    stop: tuple[str, ...] = ()
    min_tokens: int = 0  # EOS is not chosen before this many (vLLM's min_tokens)
    detokenizer: Callable[[], Detokenizer] | None = None
    # --- engine state
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    arrival: float = field(default_factory=time.perf_counter)
    slot: int = -1
    length: int = 0  # tokens in its KV cache
    prefilled: int = 0  # prompt tokens run so far
    generated: int = 0
    last_token_at: float = 0.0
    cancelled: bool = False
    cancelled_at_step: int = 0
    _text: str = ""
    _sent: int = 0
    _next: int = 0
    _rng: np.random.Generator | None = None
    _stream: Any = None


class Engine:
    def __init__(
        self,
        runtime: DecoderRuntime,
        *,
        max_queue: int,
        metrics: EngineMetrics,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.rt = runtime
        self.eos = frozenset(runtime.layout.eos)
        self.max_queue = max_queue
        self.metrics = metrics
        self.loop = loop
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._slots: list[Sequence | None] = [None] * runtime.slots
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name="onnxship-llm", daemon=True)
        self.steps = 0  # decode steps run

    # ------------------------------------------------------------------ event-loop side

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=30)

    def submit(self, seq: Sequence) -> None:
        with self._cond:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(len(self._waiting))
            self._waiting.append(seq)
            self._cond.notify()
        self._report()

    def cancel(self, seq: Sequence) -> None:
        """The client went away: the sequence ends before the next step begins."""
        if not seq.cancelled:
            seq.cancelled_at_step = self.steps
            seq.cancelled = True
            with self._cond:
                self._cond.notify()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return sum(s is not None for s in self._slots)

    # ------------------------------------------------------------------ engine thread

    def _main(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._waiting and not any(self._slots):
                    self._cond.wait()
                if self._stopping:
                    break
                admitted = self._admit()
            try:
                self._turn(admitted)
            except Exception as exc:  # a broken step fails its requests, not the server
                log.exception("generation step failed")
                for seq in [s for s in self._slots if s is not None] + admitted:
                    if seq.slot >= 0:
                        self._finish(seq, "error", error=f"generation failed: {exc}")
        for seq in [s for s in self._slots if s is not None] + list(self._waiting):
            self._finish(seq, "abort")

    def _admit(self) -> list[Sequence]:
        """Under the lock: drop abandoned waiters, give free slots to the oldest others."""
        admitted: list[Sequence] = []
        for seq in [s for s in self._waiting if s.cancelled]:
            self._waiting.remove(seq)
            self._emit(seq, Finished("abort", len(seq.prompt), 0))
            self.metrics.finished("abort", time.perf_counter() - seq.arrival, len(seq.prompt), 0)
            self.metrics.aborted(0)
        for i, occupant in enumerate(self._slots):
            if not self._waiting:
                break
            if occupant is None:
                seq = self._waiting.popleft()
                seq.slot = i
                self._slots[i] = seq
                admitted.append(seq)
        return admitted

    def _turn(self, admitted: list[Sequence]) -> None:
        now = time.perf_counter()
        for seq in self._slots:
            if seq is not None and seq.cancelled:
                self._finish(seq, "abort")
        for seq in admitted:
            if seq.slot >= 0:
                self.metrics.queued(now - seq.arrival)
                seq._rng = np.random.default_rng(seq.sampling.seed)
                seq._stream = seq.detokenizer() if seq.detokenizer else None
        budget = PREFILL_BUDGET
        prefilling = [s for s in self._slots if s is not None and s.prefilled < len(s.prompt)]
        for seq in sorted(prefilling, key=lambda s: s.arrival):
            if budget <= 0:
                break
            n = min(len(seq.prompt) - seq.prefilled, PREFILL_CHUNK, budget)
            chunk = seq.prompt[seq.prefilled : seq.prefilled + n]
            logits = self.rt.prefill(seq.slot, chunk, past=seq.prefilled)
            seq.prefilled += n
            seq.length = seq.prefilled
            budget -= n
            if seq.prefilled == len(seq.prompt):
                self._accept(seq, logits)
        self._report()
        occupied = [s for s in self._slots if s is not None]
        running = [s for s in occupied if s.prefilled == len(s.prompt)]
        if not running:
            return
        rows = max(s.slot for s in running) + 1
        tokens = np.full(rows, self.rt.layout.pad, np.int64)
        lengths = np.zeros(rows, np.int64)
        for seq in occupied:
            if seq.slot < rows:
                # A row still in its prompt gets a dummy token at its next position, which
                # its next chunk overwrites: its cache stays intact.
                lengths[seq.slot] = seq.length
                if seq.prefilled == len(seq.prompt):
                    tokens[seq.slot] = seq._next
        logits = self.rt.decode(rows, tokens, lengths)
        self.steps += 1
        for seq in running:
            seq.length += 1
            if seq.cancelled:
                self._finish(seq, "abort")
            else:
                self._accept(seq, logits[seq.slot])
        self._report()

    def _accept(self, seq: Sequence, logits: np.ndarray) -> None:
        """The token chosen from ``logits`` ends the sequence or becomes its next input."""
        assert seq._rng is not None
        if seq.generated < seq.min_tokens:
            logits = logits.copy()
            logits[list(self.eos)] = -np.inf  # as onnxruntime-genai's min_length does
        token = pick(logits, seq.sampling, seq._rng)
        now = time.perf_counter()
        if seq.generated == 0:
            self.metrics.first_token(now - seq.arrival)
        else:
            self.metrics.inter_token(now - seq.last_token_at)
        seq.last_token_at = now
        if token in self.eos:
            self._finish(seq, "stop")
            return
        seq.generated += 1
        seq._next = token
        if seq._stream is not None:
            seq._text += seq._stream.decode(token)
        if seq.stop:
            cut = _first_stop(seq._text, seq.stop, seq._sent)
            if cut is not None:
                seq._text = seq._text[:cut]
                self._finish(seq, "stop")
                return
        if seq.generated >= seq.max_tokens or seq.length >= self.rt.max_len:
            self._finish(seq, "length")
            return
        # Hold back what could still become a stop string.
        hold = max((len(s) - 1 for s in seq.stop), default=0)
        upto = max(seq._sent, len(seq._text) - hold)
        self._emit(seq, Delta(seq._text[seq._sent : upto]))
        seq._sent = upto

    def _finish(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        if seq.slot >= 0:
            self._slots[seq.slot] = None
            seq.slot = -1
        if reason == "abort" and seq.cancelled:
            # Counted, not assumed: decode steps that ran for it after the client left.
            self.metrics.aborted(self.steps - seq.cancelled_at_step)
        rest = seq._text[seq._sent :]
        seq._sent = len(seq._text)
        self._emit(seq, Finished(reason, len(seq.prompt), seq.generated, rest, error))
        self.metrics.finished(
            reason, time.perf_counter() - seq.arrival, len(seq.prompt), seq.generated
        )

    def _emit(self, seq: Sequence, event: Event) -> None:
        self.loop.call_soon_threadsafe(seq.events.put_nowait, event)

    def _report(self) -> None:
        running = [s for s in self._slots if s is not None]
        used = sum(s.length for s in running) / (self.rt.slots * self.rt.max_len)
        self.metrics.occupancy(len(running), len(self._waiting), used)


def _first_stop(text: str, stops: tuple[str, ...], sent: int) -> int | None:
    """Where the earliest stop string starts, looking only where it could not have matched
    before (text already sent cannot be taken back, so it never holds a whole stop)."""
    start = max(0, sent - max(len(s) for s in stops))
    found = [i for i in (text.find(s, start) for s in stops if s) if i >= 0]
    return min(found) if found else None
