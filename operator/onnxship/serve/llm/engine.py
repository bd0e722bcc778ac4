"""The iteration-level scheduler: requests join and leave the running batch at every step.

One thread owns the decoder. Each turn of its loop it (1) frees the slots of finished and
abandoned sequences, (2) gives free slots to waiting requests, (3) runs prompts, in chunks of
at most ``PREFILL_CHUNK`` tokens and ``PREFILL_BUDGET`` tokens a turn, oldest first, and
(4) runs one decode step for all sequences past their prompt together. A new request
therefore waits at most for the step in progress (plus the prompt chunks ahead of it), never
for the batch to end; a long prompt delays running sequences by one budget per step, not by
its whole length; a client that went away costs at most the step already running.

Prefix reuse (vLLM's automatic prefix caching, on slots): the engine remembers which tokens
each slot's cache holds, also after its sequence ended. Just before a prompt's first chunk it
looks for the slot sharing the longest prefix with it (a chat template's system line, an
earlier turn of the same conversation), copies those positions and runs only the rest. On the
bench's chat prompts that is 24 of ~38 tokens: time to first token is bound by prefill
compute, and 8 prompts arriving together each wait for the ones ahead of them. Reused and
recomputed caches were bit-identical on SmolLM2 fp32/int8/int4 (and so are the answers).

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

PREFILL_CHUNK = 256  # prompt tokens per run: bounds its activations (and a whole graph's logits)
PREFILL_BUDGET = 512  # prompt tokens per turn, across sequences, before a decode step
# A prompt's run (after a reused prefix, or a chunk) covers at least this many tokens: the
# graph's matrix products take another kernel path for a single row (int4 logits differed
# from GenAI's by ~2e-5), and GenAI runs the whole prompt at once. Only prompt positions are
# reused, never generated ones (those came from single-row decode steps).
MIN_SUFFIX = 2
# A free slot inside a decode step's rows gets a dummy token after this many of its cached
# tokens (what it keeps for reuse): its attention over them is the step's waste.
FREE_ROW_KEEP = 256


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
    prefilled: int = 0  # prompt tokens in its cache (run or reused)
    reused: int = 0  # prompt tokens copied from a cached prefix instead of run
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
        # Tokens whose keys and values each slot's cache holds at positions 0..n-1, kept
        # after its sequence ends (until the slot is given to another).
        self._cached: list[list[int]] = [[] for _ in range(runtime.slots)]
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name="onnxship-llm", daemon=True)
        self.steps = 0  # decode steps run
        self.prompt_tokens_run = 0  # prompt tokens through the graph
        self.prompt_tokens_reused = 0  # prompt tokens copied from a cached prefix

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
                self._cached = [[] for _ in range(self.rt.slots)]  # half-written, maybe
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
            # The lowest free slot, whatever it caches (a copy is cheap): a decode step runs
            # rows 0..highest, so a lone sequence on slot 0 runs one row, as GenAI does (the
            # quantized matrix products take another kernel path for several rows).
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
            if seq.prefilled == 0:
                self._reuse_prefix(seq)  # here, not at admission: prompts run this turn count
            rest = len(seq.prompt) - seq.prefilled
            n = min(rest, PREFILL_CHUNK, budget)
            if n < rest:  # no one-token chunk now or later (see MIN_SUFFIX)
                n = min(n, rest - MIN_SUFFIX)
                if n < MIN_SUFFIX:
                    break
            chunk = seq.prompt[seq.prefilled : seq.prefilled + n]
            cached = self._cached[seq.slot]
            del cached[seq.prefilled :]  # positions from here on are being overwritten
            logits = self.rt.prefill(seq.slot, chunk, past=seq.prefilled)
            cached.extend(chunk)
            self.prompt_tokens_run += n
            seq.prefilled += n
            seq.length = seq.prefilled
            budget -= n
            if seq.prefilled == len(seq.prompt):
                self._accept(seq, logits)
        self._report()
        running = [s for s in self._slots if s is not None and s.prefilled == len(s.prompt)]
        if not running:
            return
        rows = max(s.slot for s in running) + 1
        tokens = np.full(rows, self.rt.layout.pad, np.int64)
        lengths = np.zeros(rows, np.int64)
        for row in range(rows):
            seq = self._slots[row]
            if seq is None or seq.prefilled == 0:
                # A free row, or one whose prompt has not started: a dummy token after what
                # it keeps for reuse.
                kept = self._cached[row]
                del kept[min(FREE_ROW_KEEP, self.rt.max_len - 1) :]
                lengths[row] = len(kept)
            else:
                # A row still in its prompt gets a dummy token at its next position, which
                # its next chunk overwrites: its cache stays intact.
                lengths[row] = seq.length
                if seq.prefilled == len(seq.prompt):
                    tokens[row] = seq._next
        logits = self.rt.decode(rows, tokens, lengths)
        self.steps += 1
        for seq in running:
            seq.length += 1
            if seq.cancelled:
                self._finish(seq, "abort")
            else:
                self._accept(seq, logits[seq.slot])
        self._report()

    def _reuse_prefix(self, seq: Sequence) -> None:
        """Start ``seq`` after the longest prefix of its prompt that a slot's cache holds."""
        limit = len(seq.prompt) - MIN_SUFFIX
        own = min(_common(self._cached[seq.slot], seq.prompt), limit)
        best, source = own, seq.slot
        for j, cached in enumerate(self._cached):
            if j != seq.slot and len(cached) > best:
                n = min(_common(cached, seq.prompt), limit)
                if n > best:
                    best, source = n, j
        if best <= 0:
            return
        if source != seq.slot:
            self.rt.copy_prefix(source, seq.slot, best)
        self._cached[seq.slot][:] = seq.prompt[:best]
        seq.prefilled = seq.length = seq.reused = best
        self.prompt_tokens_reused += best

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


def _common(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _first_stop(text: str, stops: tuple[str, ...], sent: int) -> int | None:
    """Where the earliest stop string starts, looking only where it could not have matched
    before (text already sent cannot be taken back, so it never holds a whole stop)."""
    start = max(0, sent - max(len(s) for s in stops))
    found = [i for i in (text.find(s, start) for s in stops if s) if i >= 0]
    return min(found) if found else None
