"""The dynamic batcher in-process, over a real compiled Keras function: no server, no timing.

Queueing is made deterministic with a gate: the compute function blocks until the test opens it,
so "busy" is a state the test controls, and every assertion reads the call log or the queue.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import tensorflow as tf
from keras import layers

from seqserve_server.core.batching import DynamicBatcher
from seqserve_server.core.errors import DeadlineExpired, Overloaded

FEATURES = 3
TOLERANCE = 1e-5


def _compiled(model: keras.Model, shape: list[int | None]) -> Callable[[np.ndarray], np.ndarray]:
    """What `ModelRuntime` does: one tf.function with a dynamic batch (and time) axis."""
    spec = tf.TensorSpec([None, *shape], tf.float32)
    fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    return lambda values: fn(values).numpy()


@pytest.fixture(scope="module")
def lstm() -> Callable[[np.ndarray], np.ndarray]:
    keras.utils.set_random_seed(5)
    inp = keras.Input((None, FEATURES))
    x = layers.LSTM(16, return_sequences=True)(inp)
    return _compiled(keras.Model(inp, layers.Dense(4)(x)), [None, FEATURES])


@pytest.fixture(scope="module")
def dense() -> Callable[[np.ndarray], np.ndarray]:
    keras.utils.set_random_seed(6)
    inp = keras.Input((4,))
    x = layers.Dense(8, activation="relu")(inp)
    return _compiled(keras.Model(inp, layers.Dense(3)(x)), [4])


@pytest.fixture(scope="module")
def executor():
    with ThreadPoolExecutor(2, thread_name_prefix="test-compute") as pool:
        yield pool


class Recorder:
    """Wraps compute: logs every call's input shape; blocks while the gate is closed."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        self.fn = fn
        self.calls: list[tuple[int, ...]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False

    def __call__(self, values: np.ndarray) -> np.ndarray:
        self.calls.append(values.shape)
        if not self.gate.wait(30):
            raise TimeoutError("the test never opened the gate")
        if self.fail:
            raise ValueError("compute failed")
        return self.fn(values)

    @property
    def sizes(self) -> list[int]:
        return [shape[0] for shape in self.calls]


class Hook:
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.waits: list[float] = []
        self.depths: list[int] = []

    def batch_executed(self, size: int, compute_seconds: float) -> None:
        assert compute_seconds >= 0
        self.batches.append(size)

    def queue_wait(self, seconds: float) -> None:
        self.waits.append(seconds)

    def queue_depth(self, n: int) -> None:
        self.depths.append(n)


def make(compute, executor, **kw) -> DynamicBatcher:
    args = {"max_batch_size": 64, "max_queue_delay_s": 0.0, "max_queue_size": 1024}
    args.update(kw)
    return DynamicBatcher(compute, executor, name="m", **args)


def seqs(rng: np.random.Generator, *lengths: int) -> list[np.ndarray]:
    return [rng.normal(size=(n, FEATURES)).astype(np.float32) for n in lengths]


def alone(compute, items: list[np.ndarray]) -> list[np.ndarray]:
    return [compute(item[np.newaxis])[0] for item in items]


async def _until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until a state is reached (bounded)."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("state never reached")


def test_lone_request_goes_straight_to_compute(lstm, executor) -> None:
    async def main() -> None:
        calls = Recorder(lstm)
        calls.gate.clear()
        batcher = make(calls, executor)  # no queue delay (the default): nothing waits
        item = seqs(np.random.default_rng(1), 6)
        task = asyncio.create_task(batcher.submit_items(item, None))
        await asyncio.sleep(0)  # submit ran up to its await: it must have dispatched already
        assert batcher.in_flight == 1
        assert batcher.queue_depth == 0
        calls.gate.set()
        (out,) = await task
        assert calls.sizes == [1]
        np.testing.assert_allclose(out, alone(lstm, item)[0], atol=TOLERANCE)

    asyncio.run(main())


def test_concurrent_submits_merge_into_one_compute(lstm, executor) -> None:
    async def main() -> None:
        rng = np.random.default_rng(2)
        calls = Recorder(lstm)
        calls.gate.clear()
        batcher = make(calls, executor)
        first = asyncio.create_task(batcher.submit_items(seqs(rng, 8), None))
        await asyncio.sleep(0)
        requests = [seqs(rng, 8) for _ in range(10)]
        tasks = [asyncio.create_task(batcher.submit_items(r, None)) for r in requests]
        await _until(lambda: batcher.queue_depth == 10)
        calls.gate.set()
        await first
        results = await asyncio.gather(*tasks)
        assert calls.sizes == [1, 10]
        for request, (out,) in zip(requests, results, strict=True):
            np.testing.assert_allclose(out, alone(lstm, request)[0], atol=TOLERANCE)

    asyncio.run(main())


def test_concurrency_without_a_gate_still_batches(lstm, executor) -> None:
    async def main() -> None:
        rng = np.random.default_rng(3)
        calls = Recorder(lstm)
        batcher = make(calls, executor)
        requests = [seqs(rng, 5) for _ in range(32)]
        await asyncio.gather(*(batcher.submit_items(r, None) for r in requests))
        assert sum(calls.sizes) == 32
        assert max(calls.sizes) > 1

    asyncio.run(main())


def test_batched_equals_unbatched_for_mixed_lengths(lstm, executor) -> None:
    async def main() -> None:
        rng = np.random.default_rng(4)
        calls = Recorder(lstm)
        calls.gate.clear()
        hook = Hook()
        batcher = make(calls, executor, max_batch_size=6, metrics_hook=hook)
        blocker = asyncio.create_task(batcher.submit_items(seqs(rng, 2), None))
        await asyncio.sleep(0)
        requests = [
            seqs(rng, *rng.integers(1, 6, size=rng.integers(1, 5)).tolist()) for _ in range(20)
        ]
        tasks = [asyncio.create_task(batcher.submit_items(r, None)) for r in requests]
        await _until(lambda: batcher.queue_depth == sum(len(r) for r in requests))
        calls.gate.set()
        await blocker
        results = await asyncio.gather(*tasks)
        for request, outputs in zip(requests, results, strict=True):
            assert len(outputs) == len(request)
            for item, out, want in zip(request, outputs, alone(lstm, request), strict=True):
                assert out.shape == (len(item), 4)
                np.testing.assert_allclose(out, want, atol=TOLERANCE)
        # every call held one length only, several held more than one sequence, none too many
        assert all(len(shape) == 3 for shape in calls.calls)
        assert max(calls.sizes) > 1
        assert max(calls.sizes) <= 6
        assert sum(calls.sizes) == 1 + sum(len(r) for r in requests)
        assert hook.batches == calls.sizes
        # one wait per queued block (a request's sequences of one length); a block split
        # across two batches waits once per part
        blocks = 1 + sum(len({len(item) for item in r}) for r in requests)
        assert blocks <= len(hook.waits) <= blocks + len(calls.sizes)
        assert hook.depths[-1] == 0

    asyncio.run(main())


def test_vectors_merge_and_match(dense, executor) -> None:
    async def main() -> None:
        rng = np.random.default_rng(5)
        calls = Recorder(dense)
        batcher = make(calls, executor)
        requests = [list(rng.normal(size=(int(n), 4)).astype(np.float32)) for n in (1, 3, 2, 7)]
        results = await asyncio.gather(*(batcher.submit_items(r, None) for r in requests))
        for request, outputs in zip(requests, results, strict=True):
            for out, want in zip(outputs, alone(dense, request), strict=True):
                np.testing.assert_allclose(out, want, atol=TOLERANCE)
        assert sum(calls.sizes) == 13

    asyncio.run(main())


def test_a_request_larger_than_a_batch_is_split_in_order(lstm, executor) -> None:
    async def main() -> None:
        rng = np.random.default_rng(6)
        calls = Recorder(lstm)
        batcher = make(calls, executor, max_batch_size=4)
        request = seqs(rng, *([3] * 10))
        outputs = await batcher.submit_items(request, None)
        assert calls.sizes == [4, 4, 2]
        for out, want in zip(outputs, alone(lstm, request), strict=True):
            np.testing.assert_allclose(out, want, atol=TOLERANCE)

    asyncio.run(main())


def block(rng: np.random.Generator, rows: int, steps: int) -> np.ndarray:
    return rng.normal(size=(rows, steps, FEATURES)).astype(np.float32)


def test_a_lone_block_reaches_compute_as_it_is(lstm, executor) -> None:
    """A request's dense batch is one queue entry and, computed alone, is not copied."""

    async def main() -> None:
        seen: list[np.ndarray] = []

        def compute(values: np.ndarray) -> np.ndarray:
            seen.append(values)
            return lstm(values)

        hook = Hook()
        batcher = make(compute, executor, metrics_hook=hook)
        x = block(np.random.default_rng(20), 32, 6)
        (out,) = await batcher.submit([x], None)
        assert seen[0] is x
        assert hook.batches == [32] and len(hook.waits) == 1
        np.testing.assert_allclose(out, lstm(x), atol=TOLERANCE)

    asyncio.run(main())


def test_blocks_of_callers_fill_batches_split_at_the_batch_size(lstm, executor) -> None:
    """Blocks of 3 rows with batches of 4: a block is split across two batches, its outputs
    joined in order; queue depth counts rows."""

    async def main() -> None:
        rng = np.random.default_rng(21)
        calls = Recorder(lstm)
        calls.gate.clear()
        batcher = make(calls, executor, max_batch_size=4)
        blocker = asyncio.create_task(batcher.submit([block(rng, 1, 5)], None))
        await asyncio.sleep(0)
        blocks = [block(rng, 3, 5) for _ in range(3)]
        tasks = [asyncio.create_task(batcher.submit([b], None)) for b in blocks]
        await _until(lambda: batcher.queue_depth == 9)
        calls.gate.set()
        await blocker
        results = await asyncio.gather(*tasks)
        assert calls.sizes == [1, 4, 4, 1]
        for b, (out,) in zip(blocks, results, strict=True):
            assert out.shape == (3, 5, 4)
            np.testing.assert_allclose(out, lstm(b), atol=TOLERANCE)
        assert batcher.queue_depth == 0

    asyncio.run(main())


def test_cancelling_a_split_block_takes_its_rest_out_of_the_queue(lstm, executor) -> None:
    async def main() -> None:
        rng = np.random.default_rng(22)
        calls = Recorder(lstm)
        calls.gate.clear()
        batcher = make(calls, executor, max_batch_size=4)
        doomed = asyncio.create_task(batcher.submit([block(rng, 10, 5)], None))
        await _until(lambda: batcher.in_flight == 1)
        assert batcher.queue_depth == 6  # 4 rows computing, the rest queued
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert batcher.queue_depth == 0
        calls.gate.set()
        x = block(rng, 2, 5)
        (out,) = await batcher.submit([x], None)
        np.testing.assert_allclose(out, lstm(x), atol=TOLERANCE)
        assert calls.sizes == [4, 2]

    asyncio.run(main())


def test_a_blocks_deadline_fails_it_whole_others_go_on(lstm, executor) -> None:
    async def main() -> None:
        rng = np.random.default_rng(23)
        calls = Recorder(lstm)
        calls.gate.clear()
        batcher = make(calls, executor, max_batch_size=4)
        blocker = asyncio.create_task(batcher.submit([block(rng, 1, 5)], None))
        await asyncio.sleep(0)
        late = asyncio.create_task(batcher.submit([block(rng, 6, 5)], time.monotonic() + 0.02))
        kept = block(rng, 2, 5)
        keep = asyncio.create_task(batcher.submit([kept], None))
        await _until(lambda: batcher.queue_depth == 8)
        await asyncio.sleep(0.05)
        calls.gate.set()
        await blocker
        with pytest.raises(DeadlineExpired):
            await late
        (out,) = await keep
        np.testing.assert_allclose(out, lstm(kept), atol=TOLERANCE)
        assert calls.sizes == [1, 2]
        assert batcher.queue_depth == 0

    asyncio.run(main())


def test_expired_deadline_is_refused_and_never_computed(lstm, executor) -> None:
    async def main() -> None:
        calls = Recorder(lstm)
        batcher = make(calls, executor)
        with pytest.raises(DeadlineExpired):
            await batcher.submit_items(seqs(np.random.default_rng(7), 4), time.monotonic() - 1)
        assert calls.calls == []

    asyncio.run(main())


def test_deadline_passing_in_the_queue_drops_the_work(lstm, executor) -> None:
    async def main() -> None:
        rng = np.random.default_rng(8)
        calls = Recorder(lstm)
        calls.gate.clear()
        batcher = make(calls, executor)
        blocker = asyncio.create_task(batcher.submit_items(seqs(rng, 4), None))
        await asyncio.sleep(0)
        late = asyncio.create_task(batcher.submit_items(seqs(rng, 4, 4), time.monotonic() + 0.02))
        kept = asyncio.create_task(batcher.submit_items(seqs(rng, 4), None))
        await _until(lambda: batcher.queue_depth == 3)
        await asyncio.sleep(0.05)  # let the deadline pass while the model is busy
        calls.gate.set()
        await blocker
        with pytest.raises(DeadlineExpired):
            await late
        await kept
        assert calls.sizes == [1, 1]  # the expired sequences never reached compute
        assert batcher.queue_depth == 0

    asyncio.run(main())


def test_cancelled_caller_leaves_the_queue(lstm, executor) -> None:
    async def main() -> None:
        rng = np.random.default_rng(9)
        calls = Recorder(lstm)
        calls.gate.clear()
        batcher = make(calls, executor)
        blocker = asyncio.create_task(batcher.submit_items(seqs(rng, 4), None))
        await asyncio.sleep(0)
        doomed = asyncio.create_task(batcher.submit_items(seqs(rng, 4, 5, 4), None))
        await _until(lambda: batcher.queue_depth == 3)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert batcher.queue_depth == 0
        calls.gate.set()
        await blocker
        assert calls.sizes == [1]

    asyncio.run(main())


def test_full_queue_fails_fast_with_overloaded(lstm, executor) -> None:
    async def main() -> None:
        rng = np.random.default_rng(10)
        calls = Recorder(lstm)
        calls.gate.clear()
        batcher = make(calls, executor, max_queue_size=4)
        blocker = asyncio.create_task(batcher.submit_items(seqs(rng, 4), None))
        await asyncio.sleep(0)
        queued = asyncio.create_task(batcher.submit_items(seqs(rng, 4, 4, 4), None))
        await _until(lambda: batcher.queue_depth == 3)
        with pytest.raises(Overloaded, match=r"queue of model m is full \(3 waiting\)"):
            await batcher.submit_items(seqs(rng, 4, 4), None)
        fits = asyncio.create_task(batcher.submit_items(seqs(rng, 4), None))
        await _until(lambda: batcher.queue_depth == 4)
        calls.gate.set()
        await asyncio.gather(blocker, queued, fits)
        assert calls.sizes == [1, 4]

    asyncio.run(main())


def test_compute_error_fails_the_batch_and_the_batcher_goes_on(lstm, executor) -> None:
    async def main() -> None:
        rng = np.random.default_rng(11)
        calls = Recorder(lstm)
        calls.fail = True
        batcher = make(calls, executor)
        with pytest.raises(ValueError, match="compute failed"):
            await batcher.submit_items(seqs(rng, 4, 4, 7), None)
        assert batcher.queue_depth == 0
        calls.fail = False
        assert len(await batcher.submit_items(seqs(rng, 4), None)) == 1

    asyncio.run(main())


def test_a_failing_input_fails_only_its_own_request(lstm, executor) -> None:
    """Merged with others, an input the model raises on: the batch is recomputed item by item,
    so that only its caller gets the error (issue 10: a compute error fails that request only)."""

    def poisoned(values: np.ndarray) -> np.ndarray:
        if (values == 99).any():
            raise ValueError("the model cannot compute 99")
        return lstm(values)

    async def main() -> None:
        rng = np.random.default_rng(12)
        calls = Recorder(poisoned)
        calls.gate.clear()
        batcher = make(calls, executor)
        first = asyncio.create_task(batcher.submit_items(seqs(rng, 8), None))
        await asyncio.sleep(0)
        requests = [seqs(rng, 8) for _ in range(6)]
        requests[2][0][3, 1] = 99
        tasks = [asyncio.create_task(batcher.submit_items(r, None)) for r in requests]
        await _until(lambda: batcher.queue_depth == 6)
        calls.gate.set()
        await first
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert calls.sizes == [1, 6, 1, 1, 1, 1, 1, 1]  # merged, failed, then one by one
        assert isinstance(results[2], ValueError)
        for i, (request, result) in enumerate(zip(requests, results, strict=True)):
            if i != 2:
                np.testing.assert_allclose(result[0], alone(lstm, request)[0], atol=TOLERANCE)
        assert batcher.queue_depth == 0 and batcher.in_flight == 0

    asyncio.run(main())


def test_second_slot_waits_for_a_full_batch(lstm, executor) -> None:
    async def main() -> None:
        rng = np.random.default_rng(12)
        calls = Recorder(lstm)
        calls.gate.clear()
        batcher = make(calls, executor, max_in_flight=2, max_batch_size=3, max_queue_delay_s=60)
        first = asyncio.create_task(batcher.submit_items(seqs(rng, 4, 4, 4), None))  # a full batch
        await _until(lambda: batcher.in_flight == 1)
        second = asyncio.create_task(batcher.submit_items(seqs(rng, 4, 4), None))
        await _until(lambda: batcher.queue_depth == 2)
        assert batcher.in_flight == 1  # one busy, a slot free: wait for more (or the delay)
        third = asyncio.create_task(batcher.submit_items(seqs(rng, 4), None))
        await _until(lambda: batcher.in_flight == 2)  # a full batch takes the free slot
        assert batcher.queue_depth == 0
        calls.gate.set()
        await asyncio.gather(first, second, third)
        assert calls.sizes == [3, 3]

    asyncio.run(main())


def test_queue_delay_merges_callers_that_arrive_within_it(lstm, executor) -> None:
    """`max_queue_delay_s` at work on an idle model: a partial batch waits for later callers;
    with no delay each caller computes alone."""

    async def sizes(delay: float) -> list[int]:
        rng = np.random.default_rng(14)
        calls = Recorder(lstm)
        batcher = make(calls, executor, max_queue_delay_s=delay)
        first = asyncio.create_task(batcher.submit_items(seqs(rng, 4), None))
        await asyncio.sleep(0.05)  # the first one's compute (about 1 ms) is long done by now
        second = batcher.submit_items(seqs(rng, 4), None)
        outputs = await asyncio.gather(first, second)
        assert all(len(out) == 1 for out in outputs)
        return calls.sizes

    assert asyncio.run(sizes(0.0)) == [1, 1]
    assert asyncio.run(sizes(5.0)) == [2]


def test_a_full_batch_never_waits_for_the_queue_delay(lstm, executor) -> None:
    async def main() -> None:
        calls = Recorder(lstm)
        batcher = make(calls, executor, max_batch_size=2, max_queue_delay_s=60)
        started = time.monotonic()
        await batcher.submit_items(seqs(np.random.default_rng(15), 4, 4), None)
        assert time.monotonic() - started < 10
        assert calls.sizes == [2]

    asyncio.run(main())


@pytest.mark.parametrize("max_in_flight", [1, 2])
def test_max_in_flight_merged_batches_compute_at_once(lstm, executor, max_in_flight) -> None:
    """Two shapes queued on a busy model: with two slots both compute together."""

    async def main() -> None:
        rng = np.random.default_rng(16)
        calls = Recorder(lstm)
        calls.gate.clear()
        batcher = make(calls, executor, max_in_flight=max_in_flight)
        tasks = [asyncio.create_task(batcher.submit_items(seqs(rng, n, n), None)) for n in (4, 5)]
        await _until(lambda: batcher.in_flight == max_in_flight)
        await asyncio.sleep(0.05)
        assert len(calls.calls) == max_in_flight  # computing now, past the executor's queue
        assert batcher.queue_depth == 2 * (2 - max_in_flight)
        calls.gate.set()
        results = await asyncio.gather(*tasks)
        assert sorted(calls.sizes) == [2, 2]
        assert [len(r) for r in results] == [2, 2]

    asyncio.run(main())


def test_close_fails_queued_work(lstm, executor) -> None:
    async def main() -> None:
        rng = np.random.default_rng(13)
        calls = Recorder(lstm)
        calls.gate.clear()
        batcher = make(calls, executor)
        blocker = asyncio.create_task(batcher.submit_items(seqs(rng, 4), None))
        await asyncio.sleep(0)
        queued = asyncio.create_task(batcher.submit_items(seqs(rng, 4), None))
        await _until(lambda: batcher.queue_depth == 1)
        batcher.close()
        with pytest.raises(Overloaded):
            await queued
        with pytest.raises(Overloaded):
            await batcher.submit_items(seqs(rng, 4), None)
        calls.gate.set()
        await blocker
        assert calls.sizes == [1]

    asyncio.run(main())


class ThreadLog:
    """Wraps compute: records which thread ran each call and its batch size."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        self.fn = fn
        self.calls: list[tuple[str, int]] = []

    def __call__(self, values: np.ndarray) -> np.ndarray:
        self.calls.append((threading.current_thread().name, len(values)))
        return self.fn(values)


def test_one_caller_at_a_time_computes_inline_with_probes(lstm, executor) -> None:
    """Serial callers: after a few idle submits, batches run on the loop's own thread; every
    PROBE-th still goes to the executor (to notice load); results stay exact."""

    async def main() -> None:
        log = ThreadLog(lstm)
        batcher = make(log, executor, inline_below_s=10.0)
        rng = np.random.default_rng(11)
        for _ in range(20):
            item = seqs(rng, 5)
            (out,) = await batcher.submit_items(item, None)
            np.testing.assert_allclose(out, alone(lstm, item)[0], atol=TOLERANCE)
        threads = [name for name, _ in log.calls]
        loop_thread = threading.current_thread().name
        assert loop_thread not in threads[:2]  # the first computations measure the shape
        inline = threads.count(loop_thread)
        assert 12 <= inline < 20  # inline once entered, but probes still use the executor

    asyncio.run(main())


def test_concurrent_callers_leave_inline_mode_and_merge(lstm, executor) -> None:
    async def main() -> None:
        log = ThreadLog(lstm)
        batcher = make(log, executor, inline_below_s=10.0)
        rng = np.random.default_rng(12)
        for _ in range(10):  # serial: inline mode
            await batcher.submit_items(seqs(rng, 5), None)
        log.calls.clear()
        for _ in range(5):
            items = [seqs(rng, 5) for _ in range(16)]
            outs = await asyncio.gather(*(batcher.submit_items(i, None) for i in items))
            for item, (out,) in zip(items, outs, strict=True):
                np.testing.assert_allclose(out, alone(lstm, item)[0], atol=TOLERANCE)
        assert max(size for _, size in log.calls) > 1  # merged again under load

    asyncio.run(main())


def test_inline_is_off_with_a_queue_delay_and_for_slow_shapes(lstm, executor) -> None:
    async def main() -> None:
        loop_thread = threading.current_thread().name
        for kw in ({"max_queue_delay_s": 0.001, "inline_below_s": 10.0}, {"inline_below_s": 1e-9}):
            log = ThreadLog(lstm)
            batcher = make(log, executor, **kw)
            for _ in range(12):
                await batcher.submit_items(seqs(np.random.default_rng(13), 5), None)
            assert all(name != loop_thread for name, _ in log.calls), kw

    asyncio.run(main())
