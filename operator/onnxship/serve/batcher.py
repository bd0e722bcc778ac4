"""Admission and dynamic batching: a bounded queue in front of one ONNX Runtime session.

At most ``instances`` runs go to the session at once (default 1: its intra-op pool already
spans the CPUs the pod has; Triton calls the same knob an instance count). While runs are in
progress, requests wait here; the next run takes as many compatible ones as fit in
``max_batch_size``, stacks them, and splits the outputs back. Over ``max_queue_size``
admitted requests, the next one is refused at once with 503: a queue that grows without
bound only turns overload into timeouts.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidInput, Overloaded

Feeds = dict[str, np.ndarray]
Runner = Callable[[Feeds, list[str]], dict[str, np.ndarray]]  # blocking: session.run

# Without batching, a run expected to take at most this long goes on the event loop's own
# thread. Handing it to the executor and back (a thread wake-up, a GIL hand-over, a future
# chained into the loop) cost ~60 us of the loop's CPU on a 2-vCPU VM, more than a small
# model's whole run; a run this short blocks the loop for less than reading a large body.
INLINE_MAX_S = 0.0005


@dataclass(eq=False)
class _Item:
    feeds: Feeds
    outputs: list[str]
    rows: int
    seq: int  # sequence length, when padding is on; 0 otherwise
    key: Hashable
    future: asyncio.Future[dict[str, np.ndarray]]
    arrival: float = field(default=0.0)


class Scheduler:
    def __init__(
        self,
        run: Runner,
        executor: Executor,
        *,
        output_order: list[str],
        max_batch_size: int = 1,
        max_delay_s: float = 0.0,
        max_queue_size: int = 128,
        instances: int = 1,
        batchable: bool = False,
        crop: dict[str, int] | None = None,
        on_batch: Callable[[int], None] = lambda rows: None,
        on_depth: Callable[[int], None] = lambda depth: None,
        inline_max_s: float = INLINE_MAX_S,
    ) -> None:
        self._run = run
        self._executor = executor
        self._order = output_order
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue_size = max_queue_size
        self.batching = batchable and max_batch_size > 1
        self._batchable = batchable
        self._crop = crop  # None: requests of different lengths never share a batch
        self._on_batch = on_batch
        self._on_depth = on_depth
        self.depth = 0  # admitted and not yet answered
        self._pending: collections.deque[_Item] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Runs in flight at once; the executor must have as many threads.
        self._slots = asyncio.Semaphore(instances)
        self._running: set[asyncio.Task[None]] = set()
        # What runs have cost, for the inline choice: the least seconds of any run (the fixed
        # part) and per input element (the part that grows with the request). Minimums, so
        # that a run slowed by a busy machine or a wait for the GIL does not count; none
        # until the first run, which goes to the executor.
        self.inline_max_s = inline_max_s
        self._least_run_s = float("inf")
        self._least_per_element_s = float("inf")

    def start(self) -> None:
        if self.batching and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, *self._running, return_exceptions=True)
            self._task = None

    async def submit(self, feeds: Feeds, outputs: list[str]) -> dict[str, np.ndarray]:
        """The outputs for one request; raises Overloaded when the queue is full."""
        self.check_capacity()
        if not self.batching:
            elements = sum(a.size for a in feeds.values())
            self._on_batch(next(iter(feeds.values())).shape[0] if self._batchable else 1)
            if self._short(elements):
                # Nothing else runs on the loop until this returns, so no one can see the
                # queue depth change: the gauge is left alone.
                return self._timed(feeds, outputs, elements)
        self.depth += 1
        self._on_depth(self.depth)
        try:
            loop = asyncio.get_running_loop()
            if not self.batching:
                return await loop.run_in_executor(
                    self._executor, self._timed, feeds, outputs, elements
                )
            item = self._item(feeds, outputs, loop)
            self._pending.append(item)
            self._wake.set()
            return await item.future
        finally:
            self.depth -= 1
            self._on_depth(self.depth)

    def _short(self, elements: int) -> bool:
        expected = max(self._least_run_s, self._least_per_element_s * elements)
        return expected <= self.inline_max_s

    def _timed(self, feeds: Feeds, outputs: list[str], elements: int) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        values = self._run(feeds, outputs)
        seconds = time.perf_counter() - start
        # Plain float stores: atomic under the GIL, whichever thread ran this.
        if seconds < self._least_run_s:
            self._least_run_s = seconds
        if elements and seconds / elements < self._least_per_element_s:
            self._least_per_element_s = seconds / elements
        return values

    def check_capacity(self) -> None:
        """Raises Overloaded when the queue is full: a front end asks before it reads and
        decodes a body that would be refused anyway."""
        if self.depth >= self.max_queue_size:
            raise Overloaded(
                f"server is at capacity ({self.depth} requests queued or running); retry later"
            )

    def _item(self, feeds: Feeds, outputs: list[str], loop: asyncio.AbstractEventLoop) -> _Item:
        arrays = list(feeds.values())
        rows = arrays[0].shape[0]
        if any(a.shape[0] != rows for a in arrays):
            sizes = ", ".join(f"{n}: {a.shape[0]}" for n, a in feeds.items())
            raise InvalidInput(f"inputs disagree on the batch (first) dimension ({sizes})")
        if self._crop is not None:
            seq = arrays[0].shape[1]
            if any(a.shape[1] != seq for a in arrays):
                sizes = ", ".join(f"{n}: {a.shape[1]}" for n, a in feeds.items())
                raise InvalidInput(f"inputs disagree on the sequence (second) dimension ({sizes})")
            key: Hashable = tuple((n, a.dtype.str) for n, a in feeds.items())
        else:
            seq = 0
            key = tuple((n, a.dtype.str, a.shape[1:]) for n, a in feeds.items())
        return _Item(feeds, outputs, rows, seq, key, loop.create_future(), loop.time())

    # ------------------------------------------------------------------ the batching loop

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            first = self._pending[0]
            deadline = first.arrival + self.max_delay_s
            while self._rows_waiting(first.key) < self.max_batch_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    break
            # Wait for a free instance only now: requests that arrive meanwhile join this batch.
            await self._slots.acquire()
            batch = self._take(first.key)
            if not batch:
                self._slots.release()
                continue
            task = loop.create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._slots.release()

    def _rows_waiting(self, key: Hashable) -> int:
        return sum(i.rows for i in self._pending if i.key == key and not i.future.done())

    def _take(self, key: Hashable) -> list[_Item]:
        batch: list[_Item] = []
        rows = 0
        keep: collections.deque[_Item] = collections.deque()
        for item in self._pending:
            if item.future.done():  # the client went away while it waited
                continue
            # The first item always goes, even if it alone is larger than a batch.
            if item.key == key and (not batch or rows + item.rows <= self.max_batch_size):
                batch.append(item)
                rows += item.rows
            else:
                keep.append(item)
        self._pending = keep
        return batch

    async def _execute(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        names = self._output_names(batch)
        feeds = batch[0].feeds if len(batch) == 1 else self._stack(batch)
        self._on_batch(sum(i.rows for i in batch))
        try:
            results = await loop.run_in_executor(self._executor, self._run, feeds, names)
        except Exception as exc:
            if len(batch) == 1:
                _settle_error(batch[0], exc)
                return
            # One bad request must not fail the others it shared a batch with.
            for item in batch:
                try:
                    alone = await loop.run_in_executor(
                        self._executor, self._run, item.feeds, item.outputs
                    )
                except Exception as exc_one:
                    _settle_error(item, exc_one)
                else:
                    _settle(item, alone)
            return
        if len(batch) == 1:
            _settle(batch[0], {n: results[n] for n in batch[0].outputs})
            return
        offset = 0
        for item in batch:
            part: dict[str, np.ndarray] = {}
            for name in item.outputs:
                value = results[name][offset : offset + item.rows]
                if self._crop and name in self._crop and value.shape[1] != item.seq:
                    value = value[:, : item.seq]
                part[name] = value
            offset += item.rows
            _settle(item, part)

    def _output_names(self, batch: list[_Item]) -> list[str]:
        wanted = {n for item in batch for n in item.outputs}
        return [n for n in self._order if n in wanted]

    def _stack(self, batch: list[_Item]) -> Feeds:
        names = list(batch[0].feeds)
        longest = max(i.seq for i in batch)
        if self._crop is None or all(i.seq == longest for i in batch):
            return {n: np.concatenate([i.feeds[n] for i in batch]) for n in names}
        # Pad to the longest sequence with zeros: mask 0 marks the padding as not-a-token,
        # and 0 is the pad id of BERT-style vocabularies.
        rows = sum(i.rows for i in batch)
        feeds: Feeds = {}
        for n in names:
            first = batch[0].feeds[n]
            out = np.zeros((rows, longest), dtype=first.dtype)
            offset = 0
            for i in batch:
                out[offset : offset + i.rows, : i.seq] = i.feeds[n]
                offset += i.rows
            feeds[n] = out
        return feeds


def _settle(item: _Item, value: dict[str, np.ndarray]) -> None:
    if not item.future.done():
        item.future.set_result(value)


def _settle_error(item: _Item, exc: BaseException) -> None:
    if not item.future.done():
        item.future.set_exception(exc)
