"""The per-model dynamic batcher: concurrent requests' sequences merge into one compute call.

Transport-free (numpy in, numpy out). One `DynamicBatcher` per served model version sits between
the inference service and `ModelRuntime.compute`:

- **Exact.** Only items of the same shape (vectors; sequences of the same length; for models
  with several inputs, the same shape of every input) share a compute call, so nothing is
  padded or masked and a batched result equals the unbatched one (to float rounding of the
  batched matmul, well within 1e-5).
- **Batching as Triton's dynamic batcher does.** Up to `max_in_flight` merged computations run
  at once. A free slot takes the oldest shape's queued items (up to `max_batch_size`) when they
  fill a batch, or once the oldest of them has waited `max_queue_delay_s`; until then it waits
  for more callers to fill the batch. With a delay of 0 (the default) nothing waits: a lone
  request at low load goes straight to compute, and items queue only while every slot is busy,
  all of them leaving together when one frees.
- **Deadlines and cancellation.** Work whose deadline (`time.monotonic()` seconds) has passed is
  dropped before compute with `DeadlineExpired`; a cancelled `submit` takes its queued items out
  of the queue; past `max_queue_size` queued items `submit` fails fast with `Overloaded`.

The event loop only does bookkeeping; stacking, the compute call and splitting run on the
executor (TensorFlow releases the GIL while it computes) -- except, with `inline_below_s`, when
the batcher is serving one caller at a time (see `_Inline`): handing a lone small batch to a
thread and back costs about as much as computing it, so it is computed on the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

import numpy as np

from .batch import Item
from .errors import DeadlineExpired, Overloaded
from .observer import ModelObserver, NullModelObserver

# Stacked items: one array, or one per input (in the model's order) for several inputs.
Values = np.ndarray | tuple[np.ndarray, ...]
Compute = Callable[[Values], np.ndarray]


class _Request:
    """One `submit` call: its items' results, and the future its caller awaits."""

    __slots__ = ("deadline", "future", "queued", "remaining", "results")

    def __init__(self, n: int, deadline: float | None, future: asyncio.Future) -> None:
        self.results: list[np.ndarray | None] = [None] * n
        self.remaining = n
        self.queued = n  # items of this request still in the queue
        self.deadline = deadline
        self.future = future


class _Slot:
    """One queued item: which request and position it belongs to, and when it was queued."""

    __slots__ = ("index", "item", "queued_at", "request")

    def __init__(self, request: _Request, index: int, item: Item, queued_at: float) -> None:
        self.request = request
        self.index = index
        self.item = item
        self.queued_at = queued_at


class _Inline:
    """When to compute on the event loop instead of the executor.

    Only while requests come one at a time: after `ENTER` submits in a row found nothing queued
    and nothing computing. Computing inline blocks the loop, so under load every submit would
    find the batcher idle again; hence every `PROBE`-th inline-eligible batch goes through the
    executor anyway, and a submit arriving while that runs (or finding anything queued) ends
    inline mode. Only shapes whose fastest computation took under `below_s` run inline: the
    loop is never blocked for long, and a new shape (a long sequence) goes to the executor first.
    """

    ENTER = 3
    PROBE = 8
    KEPT = 1024  # shapes whose compute time is remembered

    __slots__ = ("active", "below_s", "seconds", "since_probe", "streak")

    def __init__(self, below_s: float) -> None:
        self.below_s = below_s
        self.active = False
        self.streak = 0
        self.since_probe = 0
        self.seconds: dict[tuple, float] = {}  # (shape key, items) -> its fastest compute time

    def computed(self, key: tuple, seconds: float) -> None:
        """The fastest time seen: what the work costs, not how busy the machine was then."""
        if len(self.seconds) >= self.KEPT and key not in self.seconds:
            self.seconds.clear()
        self.seconds[key] = min(seconds, self.seconds.get(key, seconds))

    def arrived(self, idle: bool) -> None:
        """A submit arrived; `idle`: nothing was queued or computing."""
        if not idle:
            self.active = False
            self.streak = 0
        elif not self.active:
            self.streak += 1
            self.active = self.streak >= self.ENTER

    def take(self, key: tuple) -> bool:
        """Whether the batch `key` (items' shape key, count) about to start runs inline."""
        if not self.active or self.seconds.get(key, self.below_s) >= self.below_s:
            return False
        self.since_probe += 1
        if self.since_probe >= self.PROBE:
            self.since_probe = 0
            return False
        return True


class DynamicBatcher:
    """Merge same-shape items of concurrent `submit` calls into `compute` calls (see module doc)."""

    def __init__(
        self,
        compute: Compute,
        executor: Executor | None,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int,
        metrics_hook: ModelObserver | None = None,
        *,
        name: str = "model",
        max_in_flight: int = 1,
        inline_below_s: float = 0.0,
    ) -> None:
        if max_batch_size < 1 or max_queue_size < 1 or max_in_flight < 1:
            raise ValueError("max_batch_size, max_queue_size and max_in_flight must be >= 1")
        if max_queue_delay_s < 0:
            raise ValueError("max_queue_delay_s must be >= 0")
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue_size = max_queue_size
        self.max_in_flight = max_in_flight
        self._compute = compute
        self._executor = executor
        self._metrics: ModelObserver = metrics_hook or NullModelObserver()
        # shape(s) -> queued slots, oldest first; the dict keeps groups in order of first arrival
        self._groups: OrderedDict[tuple, deque[_Slot]] = OrderedDict()
        self._depth = 0
        self._in_flight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        # Off (None) when any waiting is configured: then batches are meant to fill first.
        use_inline = inline_below_s > 0 and max_queue_delay_s == 0
        self._inline = _Inline(inline_below_s) if use_inline else None

    # -- public --------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Items waiting (not yet handed to compute)."""
        return self._depth

    @property
    def in_flight(self) -> int:
        """Compute calls running now."""
        return self._in_flight

    async def submit(self, items: Sequence[Item], deadline: float | None) -> list[np.ndarray]:
        """Compute one request's validated items; their outputs in the same order.

        `deadline` is an absolute `time.monotonic()` time (None: no deadline). Raises
        `Overloaded` when the queue cannot take the items, `DeadlineExpired` when the deadline
        passes before they are computed; cancelling the call takes its items out of the queue.
        """
        if self._closed:
            raise Overloaded(f"model {self.name} is shutting down")
        if not items:
            return []
        if deadline is not None and deadline <= time.monotonic():
            raise DeadlineExpired(f"the deadline passed before model {self.name} could run")
        if self._depth and self._depth + len(items) > self.max_queue_size:
            # A request larger than the whole queue is still taken when the queue is empty.
            raise Overloaded(f"queue of model {self.name} is full ({self._depth} waiting)")
        if self._inline is not None:
            self._inline.arrived(not self._depth and not self._in_flight)
        loop = asyncio.get_running_loop()
        request = _Request(len(items), deadline, loop.create_future())
        now = time.perf_counter()
        groups = self._groups
        for index, item in enumerate(items):
            key = _shape_key(item)
            group = groups.get(key)
            if group is None:
                group = groups[key] = deque()
            group.append(_Slot(request, index, item, now))
        self._depth += len(items)
        self._metrics.queue_depth(self._depth)
        self._dispatch()
        try:
            return await request.future
        except asyncio.CancelledError:
            self._withdraw(request)
            raise

    def close(self) -> None:
        """Refuse new work and fail what is queued with `Overloaded`; running computes finish."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for group in self._groups.values():
            for slot in group:
                _fail(slot.request, Overloaded(f"model {self.name} is shutting down"))
        self._groups.clear()
        self._depth = 0
        self._metrics.queue_depth(0)

    # -- queue ---------------------------------------------------------------------------------

    def _withdraw(self, request: _Request) -> None:
        """Take a finished or cancelled request's remaining items out of the queue."""
        if not request.queued:
            return
        for key in list(self._groups):
            group = self._groups[key]
            kept = deque(s for s in group if s.request is not request)
            removed = len(group) - len(kept)
            if removed:
                self._depth -= removed
                request.queued -= removed
                if kept:
                    self._groups[key] = kept
                else:
                    del self._groups[key]
            if not request.queued:
                break
        self._metrics.queue_depth(self._depth)

    def _dispatch(self) -> None:
        """Start computations while there are free slots and batches ready to start."""
        while self._groups and self._in_flight < self.max_in_flight:
            key = self._next_ready()
            if key is None:
                return
            self._start(key, self._groups[key])

    def _next_ready(self) -> tuple[int, ...] | None:
        """The oldest shape whose items fill a batch or have waited the queue delay; None, with
        a timer set for the first one that will have, when no shape is ready yet."""
        now = time.perf_counter()
        soonest = self.max_queue_delay_s
        for key, group in self._groups.items():
            left = self.max_queue_delay_s - (now - group[0].queued_at)
            if left <= 0 or len(group) >= self.max_batch_size:
                return key
            soonest = min(soonest, left)
        self._arm_timer(soonest)
        return None

    def _arm_timer(self, delay: float) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _start(self, key: tuple, group: deque[_Slot]) -> None:
        take = min(len(group), self.max_batch_size)
        slots = [group.popleft() for _ in range(take)]
        if not group:
            del self._groups[key]
        self._depth -= take
        now_mono = time.monotonic()
        now = time.perf_counter()
        live: list[_Slot] = []
        for slot in slots:
            request = slot.request
            request.queued -= 1
            if request.future.done():
                continue  # failed earlier (e.g. another item's deadline)
            if request.deadline is not None and request.deadline <= now_mono:
                why = f"the deadline passed while model {self.name} was busy"
                _fail(request, DeadlineExpired(why))
                self._withdraw(request)
                continue
            self._metrics.queue_wait(now - slot.queued_at)
            live.append(slot)
        self._metrics.queue_depth(self._depth)
        if not live:
            return
        self._in_flight += 1
        items = [s.item for s in live]
        if self._inline is not None and self._inline.take((key, len(items))):
            self._in_flight -= 1
            self._deliver(live, self._compute_batch(items))
            return
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._compute_batch, items)
        future.add_done_callback(lambda f: self._finish(live, f))

    def _compute_batch(self, items: list[Item]) -> list[np.ndarray | Exception]:
        """On the executor: stack, compute, time it. When a merged computation fails, each item
        is computed alone: one caller's bad input must not fail the others."""
        try:
            return list(self._timed_compute(items))
        except Exception as exc:  # noqa: BLE001 - returned per item, raised by its own request
            if len(items) == 1:
                return [exc]
            return [self._alone(item) for item in items]

    def _alone(self, item: Item) -> np.ndarray | Exception:
        try:
            return self._timed_compute([item])[0]
        except Exception as exc:  # noqa: BLE001 - see _compute_batch
            return exc

    def _timed_compute(self, items: list[Item]) -> np.ndarray:
        values = _stack(items)
        start = time.perf_counter()
        outputs = self._compute(values)
        seconds = time.perf_counter() - start
        self._metrics.batch_executed(len(items), seconds)
        if self._inline is not None:  # what the same batch inline would cost
            self._inline.computed((_shape_key(items[0]), len(items)), seconds)
        if len(outputs) != len(items):
            raise RuntimeError(f"compute returned {len(outputs)} outputs for {len(items)} inputs")
        return outputs

    def _finish(self, slots: list[_Slot], future: asyncio.Future) -> None:
        self._in_flight -= 1
        if future.cancelled():  # the executor shut down with the work still queued on it
            outputs: list[np.ndarray | BaseException] = [
                Overloaded(f"model {self.name} is shutting down")
            ] * len(slots)
        else:
            error = future.exception()
            outputs = [error] * len(slots) if error is not None else future.result()
        self._deliver(slots, outputs)
        if not self._closed:
            self._dispatch()

    def _deliver(self, slots: list[_Slot], outputs: Sequence[np.ndarray | BaseException]) -> None:
        """Each output to its request; a request's future is set once all its items are in."""
        for slot, output in zip(slots, outputs, strict=True):
            request = slot.request
            if isinstance(output, BaseException):
                if _fail(request, output):
                    self._withdraw(request)
                continue
            if request.future.done():
                continue
            request.results[slot.index] = output
            request.remaining -= 1
            if not request.remaining:
                request.future.set_result(request.results)


def _shape_key(item: Item) -> tuple:
    """Items merge when every one of their arrays has the same shape."""
    return tuple(a.shape for a in item) if isinstance(item, tuple) else item.shape


def _stack(items: list[Item]) -> Values:
    """One batch of items: stacked (per input, for several inputs)."""
    if isinstance(items[0], tuple):
        return tuple(_stack_arrays(list(column)) for column in zip(*items, strict=True))
    return _stack_arrays(items)  # type: ignore[arg-type]


def _stack_arrays(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0][np.newaxis] if len(arrays) == 1 else np.stack(arrays)


def _fail(request: _Request, error: BaseException) -> bool:
    """Fail a request's future once; False when it was already done."""
    if request.future.done():
        return False
    request.future.set_exception(error)
    return True
