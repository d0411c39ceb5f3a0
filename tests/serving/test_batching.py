"""The micro-batcher: merges concurrent calls, keeps order, isolates a failing batch."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from churnlens.serving.batching import MicroBatcher


def test_a_lone_call_runs_at_once_and_alone():
    seen = []

    def fn(items):
        seen.append(list(items))
        return [i * 10 for i in items]

    async def main():
        b = MicroBatcher(fn)
        t0 = time.perf_counter()
        out = await b.submit([1, 2])
        return out, time.perf_counter() - t0, b.batches

    out, seconds, batches = asyncio.run(main())
    assert out == [10, 20] and seen == [[1, 2]] and batches == 1
    assert seconds < 1.0  # no batching window: nothing waits for company


def test_calls_arriving_during_a_batch_are_merged_in_order():
    gate, sizes = threading.Event(), []

    def fn(items):
        sizes.append(len(items))
        gate.wait(5)  # the first batch holds until every other call has queued
        return [f"r{i}" for i in items]

    async def main():
        b = MicroBatcher(fn, max_items=5)
        first = asyncio.ensure_future(b.submit([0]))
        await asyncio.sleep(0.05)  # the first batch is running now
        rest = [asyncio.ensure_future(b.submit([k, k + 100])) for k in range(1, 5)]
        await asyncio.sleep(0.05)
        gate.set()
        return await first, [await r for r in rest], b.batches

    first, rest, batches = asyncio.run(main())
    assert first == ["r0"]
    assert rest == [[f"r{k}", f"r{k + 100}"] for k in range(1, 5)]
    # 1 alone, then calls of 2 merged while they fit 5 items: [2+2], [2+2]
    assert sizes == [1, 4, 4] and batches == 3


def test_a_failing_batch_fails_its_calls_only():
    def fn(items):
        if "bad" in items:
            raise ValueError("cannot score 'bad'")
        return items

    async def main():
        b = MicroBatcher(fn, max_items=1)
        results = await asyncio.gather(b.submit(["bad"]), b.submit(["ok"]),
                                       return_exceptions=True)
        return results

    bad, ok = asyncio.run(main())
    assert isinstance(bad, ValueError) and "cannot score 'bad'" in str(bad)
    assert ok == ["ok"]


def test_a_wrong_result_count_is_an_error_not_a_shift():
    async def main():
        return await MicroBatcher(lambda items: items[:-1]).submit([1, 2, 3])

    with pytest.raises(RuntimeError, match="returned 2 results for 3 items"):
        asyncio.run(main())


def test_max_items_must_be_positive():
    with pytest.raises(ValueError, match="max_items must be at least 1"):
        MicroBatcher(lambda items: items, max_items=0)
