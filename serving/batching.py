"""Adaptive batching without a batching window: calls that arrive while a batch is being
scored are merged into the next batch.

At low traffic every call is scored at once, alone (no added latency); under load the
batches grow by themselves to what arrived during the previous batch, up to `max_items`.

Why not BentoML's own batching (`@bentoml.api(batchable=True)`): its dispatcher learns how
long to hold requests from the average time requests waited before, so waiting feeds on
itself. Measured with 1.4.39 on this service: after a burst at 32 concurrent clients it
kept holding requests at 20 calls/s, p50 59.7 ms for a call that takes ~6 ms alone.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Runs FN (items -> one result per item, in order) on merged calls, one batch at a time.

    FN runs in a worker thread, so the event loop keeps accepting calls meanwhile. If FN
    raises, every call of that batch gets the exception; later batches are unaffected.
    ON_BATCH, if given, is called with each batch's item count (a metric).
    """

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], max_items: int = 256,
                 on_batch: Callable[[int], None] | None = None):
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self.fn, self.max_items, self.on_batch = fn, max_items, on_batch
        self._queue: list[tuple[list[T], asyncio.Future]] = []
        self._running = False
        self.batches = 0  # batches run so far (for tests and metrics)

    async def submit(self, items: Sequence[T]) -> list[R]:
        """The results for ITEMS, scored alone or together with concurrent calls."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((list(items), future))
        if not self._running:
            self._running = True
            # In an empty context, not the first caller's: a long-running drain would keep
            # that call's context (and its tracing span) alive, and with it, through each
            # span's parent context, every span since (seen as growing GC pauses).
            asyncio.get_running_loop().create_task(self._drain(), context=contextvars.Context())
        return await future

    def _next_batch(self) -> list[tuple[list[T], asyncio.Future]]:
        """Whole calls from the queue's front: at least one, then while they fit max_items."""
        taken, size = [], 0
        while self._queue and (not taken or size + len(self._queue[0][0]) <= self.max_items):
            call = self._queue.pop(0)
            taken.append(call)
            size += len(call[0])
        return taken

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._next_batch()
                items = [item for call, _ in batch for item in call]
                self.batches += 1
                if self.on_batch is not None:
                    self.on_batch(len(items))
                try:
                    results = list(await asyncio.to_thread(self.fn, items))
                    if len(results) != len(items):
                        raise RuntimeError(f"batch function returned {len(results)} results "
                                           f"for {len(items)} items")
                except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                start = 0
                for call, future in batch:
                    if not future.done():  # a caller that went away was cancelled
                        future.set_result(results[start:start + len(call)])
                    start += len(call)
        finally:
            self._running = False
