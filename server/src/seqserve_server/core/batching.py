"""The per-model dynamic batcher: concurrent requests' sequences merge into one compute call.

Transport-free (numpy in, numpy out). One `DynamicBatcher` per served model version sits between
the inference service and `ModelRuntime.compute`. Its unit of work is a **block**: rows of one
shape (a request's dense batch, or its sequences of one length), queued and computed as a whole
so that a 32-sequence request costs one queue entry, one copy-free compute input when it runs
alone, and one output slice -- not 32 of each.

- **Exact.** Only rows of the same shape (vectors; sequences of the same length; for models with
  several inputs, the same shape of every input) share a compute call, so nothing is padded or
  masked and a batched result equals the unbatched one (to float rounding of the batched matmul,
  well within 1e-5).
- **Batching as Triton's dynamic batcher does.** Up to `max_in_flight` merged computations run
  at once. A free slot takes the oldest shape's queued rows (up to `max_batch_size`, splitting
  the block that would overflow it) when they fill a batch, or once the oldest of them has
  waited `max_queue_delay_s`; until then it waits for more callers to fill the batch. With a
  delay of 0 (the default) nothing waits: a lone request at low load goes straight to compute,
  and rows queue only while every slot is busy, all of them leaving together when one frees.
- **Deadlines and cancellation.** Work whose deadline (`time.monotonic()` seconds) has passed is
  dropped before compute with `DeadlineExpired`; a cancelled `submit` takes its queued blocks out
  of the queue; past `max_queue_size` queued rows `submit` fails fast with `Overloaded`.
- **Overload** (`core/admission.py` decides, the batcher applies): a call whose deadline cannot
  cover the estimated wait is refused before it is queued (`LoadShed`); while more than one
  batch waits the newest rows go first (adaptive LIFO); under a standing queue rows that waited
  past the policy's limit are shed (CoDel-style). Merging and exactness are unchanged: LIFO
  only changes which rows of a shape fill the next batch.

The event loop only does bookkeeping; joining blocks, the compute call and slicing run on the
executor (TensorFlow releases the GIL while it computes) -- except, with `inline_below_s`, when
the batcher is serving one caller at a time (see `_Inline`): handing a lone small batch to a
thread and back costs about as much as computing it, so it is computed on the loop.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

import numpy as np

from .admission import Admission, AdmissionSettings
from .batch import Item
from .errors import DeadlineExpired, LoadShed, Overloaded
from .observer import ModelObserver, NullModelObserver

# Rows of one shape: one array, or one per input (in the model's order) for several inputs.
Values = np.ndarray | tuple[np.ndarray, ...]
Compute = Callable[[Values], np.ndarray]


class _Request:
    """One `submit` call: its blocks' outputs as they come in, and the future its caller awaits."""

    __slots__ = ("deadline", "future", "pieces", "queued", "remaining")

    def __init__(self, rows: int, blocks: int, deadline: float | None, future: asyncio.Future):
        # per block: (first row, output) of every part computed so far
        self.pieces: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(blocks)]
        self.remaining = rows  # rows not computed yet
        self.queued = rows  # rows still in the queue
        self.deadline = deadline
        self.future = future

    def put(self, block: int, first: int, output: np.ndarray, rows: int) -> None:
        """A computed part; the future is set once every row is in."""
        self.pieces[block].append((first, output))
        self.remaining -= rows
        if not self.remaining:
            self.future.set_result([_joined(parts) for parts in self.pieces])


class _Slot:
    """Queued rows of one block: whose, which block and rows of it, since when."""

    __slots__ = ("block", "first", "queued_at", "request", "rows", "values")

    def __init__(
        self, request: _Request, block: int, first: int, values: Values, queued_at: float
    ) -> None:
        self.request = request
        self.block = block
        self.first = first
        self.values = values
        self.rows = _rows(values)
        self.queued_at = queued_at

    def split(self, rows: int) -> _Slot:
        """Take the first `rows` rows off as a slot of their own; this one keeps the rest."""
        head_values = _rows_slice(self.values, 0, rows)
        head = _Slot(self.request, self.block, self.first, head_values, self.queued_at)
        self.values = _rows_slice(self.values, rows, self.rows)
        self.first += rows
        self.rows -= rows
        return head


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
        self.seconds: dict[tuple, float] = {}  # (row shape key, rows) -> its fastest compute time

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
        """Whether the batch `key` (row shape key, rows) about to start runs inline."""
        if not self.active or self.seconds.get(key, self.below_s) >= self.below_s:
            return False
        self.since_probe += 1
        if self.since_probe >= self.PROBE:
            self.since_probe = 0
            return False
        return True


class DynamicBatcher:
    """Merge same-shape rows of concurrent `submit` calls into `compute` calls (see module doc)."""

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
        admission: AdmissionSettings | None = None,
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
        # row shape(s) -> queued slots, oldest first; the dict keeps shapes in order of arrival
        self._groups: OrderedDict[tuple, deque[_Slot]] = OrderedDict()
        self._depth = 0
        self._peak_depth = 0  # the most rows waiting since `take_peak_depth` last looked
        self._in_flight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        # Rows queued before this `perf_counter` time were overtaken by newer rows (LIFO): only
        # those may be shed. A request's own rows share one time and never overtake each other.
        self._overtaken_before = -math.inf
        # Off (None) when any waiting is configured: then batches are meant to fill first.
        use_inline = inline_below_s > 0 and max_queue_delay_s == 0
        self._inline = _Inline(inline_below_s) if use_inline else None
        self.admission = Admission(
            admission or AdmissionSettings(), max_batch_size, max_in_flight, name,
            max_queue_delay_s,
        )  # fmt: skip

    # -- public --------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Rows waiting (not yet handed to compute)."""
        return self._depth

    def take_peak_depth(self) -> int:
        """The most rows that waited at once since the last look (a sample of `queue_depth`
        would mostly see the moment after a batch left)."""
        peak, self._peak_depth = self._peak_depth, self._depth
        return peak

    @property
    def in_flight(self) -> int:
        """Compute calls running now."""
        return self._in_flight

    async def submit(self, blocks: Sequence[Values], deadline: float | None) -> list[np.ndarray]:
        """Compute one request's validated blocks (each: rows of one shape); one output array
        per block, rows in the same order.

        `deadline` is an absolute `time.monotonic()` time (None: the admission policy's default
        budget, if any). Raises `Overloaded` when the queue cannot take the rows, `LoadShed`
        when the deadline cannot cover the estimated wait (or, past capacity, the rows waited
        too long), `DeadlineExpired` when the deadline passes before they are computed;
        cancelling the call takes its rows out of the queue.
        """
        if self._closed:
            raise Overloaded(f"model {self.name} is shutting down")
        if not blocks:
            return []
        if not all(_rows(values) for values in blocks):
            raise ValueError("every block needs at least one row")  # validation refuses those
        rows = sum(_rows(values) for values in blocks)
        now_mono = time.monotonic()
        deadline = self.admission.deadline(deadline, now_mono)
        if deadline is not None and deadline <= now_mono:
            raise DeadlineExpired(f"the deadline passed before model {self.name} could run")
        if self._depth and self._depth + rows > self.max_queue_size:
            # A request larger than the whole queue is still taken when the queue is empty.
            raise Overloaded(f"queue of model {self.name} is full ({self._depth} waiting)")
        try:
            self.admission.admit(deadline, now_mono, self._depth, rows, self._in_flight)
        except LoadShed:
            self._metrics.shed("deadline")
            raise
        if self._inline is not None:
            self._inline.arrived(not self._depth and not self._in_flight)
        request = _Request(rows, len(blocks), deadline, asyncio.get_running_loop().create_future())
        now = time.perf_counter()
        self.admission.queue_seen(self._depth, now)
        groups = self._groups
        for index, values in enumerate(blocks):
            key = _shape_key(values)
            group = groups.get(key)
            if group is None:
                group = groups[key] = deque()
            group.append(_Slot(request, index, 0, values, now))
        self._depth += rows
        self._peak_depth = max(self._peak_depth, self._depth)
        self._metrics.queue_depth(self._depth)
        self._dispatch()
        try:
            return await request.future
        except asyncio.CancelledError:
            self._withdraw(request)
            raise

    async def submit_items(self, items: Sequence[Item], deadline: float | None) -> list[np.ndarray]:
        """`submit` for items of any shapes (a ragged batch): items of one shape go as one
        block; one output per item, in order."""
        order: dict[tuple, list[int]] = {}
        for index, item in enumerate(items):
            order.setdefault(_item_key(item), []).append(index)
        blocks = [_stack([items[i] for i in indices]) for indices in order.values()]
        outputs: list[np.ndarray] = [None] * len(items)  # type: ignore[list-item]
        for indices, block in zip(order.values(), await self.submit(blocks, deadline), strict=True):
            for index, output in zip(indices, block, strict=True):
                outputs[index] = output
        return outputs

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
        """Take a finished or cancelled request's remaining rows out of the queue."""
        if not request.queued:
            return
        for key in list(self._groups):
            group = self._groups[key]
            kept = deque(s for s in group if s.request is not request)
            removed = sum(s.rows for s in group if s.request is request)
            if removed:
                self._depth -= removed
                request.queued -= removed
                if kept:
                    self._groups[key] = kept
                else:
                    del self._groups[key]
            if not request.queued:
                break
        self._depth_changed()

    def _dispatch(self) -> None:
        """Start computations while there are free slots and batches ready to start."""
        if self._groups and self._in_flight < self.max_in_flight:
            self._shed_stale()
        while self._groups and self._in_flight < self.max_in_flight:
            key = self._next_ready()
            if key is None:
                return
            self._start(key, self._groups[key])

    def _shed_stale(self) -> None:
        """CoDel-style: under a standing queue, fail the rows that waited past the policy's
        limit and were overtaken by newer calls' rows (oldest first in each shape's queue;
        one large request waiting for its own batches is not overload), then take them out
        in one pass."""
        now = time.perf_counter()
        limit = self.admission.sojourn_limit_s(self._depth, now)
        if limit is None:
            return
        stale: dict[_Request, float] = {}
        for group in self._groups.values():
            for slot in group:
                if now - slot.queued_at <= limit or slot.queued_at >= self._overtaken_before:
                    break
                stale.setdefault(slot.request, now - slot.queued_at)
        if not stale:
            return
        now_mono = time.monotonic()
        drain_s = self.admission.estimate_s(self._depth, 0, self._in_flight)
        shed = False
        for request, waited in stale.items():
            left = None if request.deadline is None else request.deadline - now_mono
            if left is None or left > drain_s:
                continue  # it can still be answered in time (or has no time to miss): keep it
            _fail(request, self.admission.shed_waiting(waited, left, drain_s))
            self._metrics.shed("queue")
            shed = True
        if shed:
            self._purge_done()

    def _purge_done(self) -> None:
        """Take every finished request's rows out of the queue (one pass over it)."""
        for key in list(self._groups):
            kept: deque[_Slot] = deque()
            for slot in self._groups[key]:
                if slot.request.future.done():
                    self._depth -= slot.rows
                    slot.request.queued -= slot.rows
                else:
                    kept.append(slot)
            if kept:
                self._groups[key] = kept
            else:
                del self._groups[key]
        self._depth_changed()

    def _depth_changed(self) -> None:
        self._metrics.queue_depth(self._depth)
        self.admission.queue_seen(self._depth, time.perf_counter())

    def _next_ready(self) -> tuple | None:
        """The oldest shape whose rows fill a batch or have waited the queue delay; None, with
        a timer set for the first one that will have, when no shape is ready yet."""
        now = time.perf_counter()
        soonest = self.max_queue_delay_s
        for key, group in self._groups.items():
            left = self.max_queue_delay_s - (now - group[0].queued_at)
            if left <= 0 or _queued_rows(group, self.max_batch_size) >= self.max_batch_size:
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

    def _take(self, key: tuple, group: deque[_Slot]) -> list[_Slot]:
        """Up to `max_batch_size` rows of a shape's queue: oldest first, or newest first while
        more than one batch waits (the admission policy's adaptive LIFO)."""
        newest = self.admission.newest_first(self._depth)
        end = -1 if newest else 0
        pop = group.pop if newest else group.popleft
        room = self.max_batch_size
        slots: list[_Slot] = []
        while group and room:
            slot = group[end]
            if slot.rows > room:
                slots.append(slot.split(room))
                room = 0
                break
            slots.append(pop())
            room -= slot.rows
        if not group:
            del self._groups[key]
        elif newest:
            taken_at = min(slot.queued_at for slot in slots)
            self._overtaken_before = max(self._overtaken_before, taken_at)
        self._depth -= self.max_batch_size - room
        return slots

    def _start(self, key: tuple, group: deque[_Slot]) -> None:
        slots = self._take(key, group)
        now_mono = time.monotonic()
        now = time.perf_counter()
        live: list[_Slot] = []
        for slot in slots:
            request = slot.request
            request.queued -= slot.rows
            if request.future.done():
                continue  # failed earlier (e.g. another block's deadline)
            if request.deadline is not None and request.deadline <= now_mono:
                why = f"the deadline passed while model {self.name} was busy"
                _fail(request, DeadlineExpired(why))
                self._withdraw(request)
                continue
            self._metrics.queue_wait(now - slot.queued_at)
            live.append(slot)
        self._depth_changed()
        if not live:
            return
        self._in_flight += 1
        parts = [s.values for s in live]
        if self._inline is not None and self._inline.take((key, sum(s.rows for s in live))):
            self._in_flight -= 1
            self._deliver(live, self._compute_batch(parts))
            self.admission.batch_done(time.perf_counter() - now)
            return
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._compute_batch, parts)
        future.add_done_callback(lambda f: self._finish(live, f, now))

    def _compute_batch(self, parts: list[Values]) -> list[np.ndarray | Exception]:
        """On the executor: join, compute, time it; one output per part. When a merged
        computation fails, each part is computed alone: one caller's bad input must not fail
        the others."""
        try:
            outputs = self._timed_compute(_joined_values(parts))
        except Exception as exc:  # noqa: BLE001 - returned per part, raised by its own request
            if len(parts) == 1:
                return [exc]
            return [self._alone(values) for values in parts]
        bounds = list(itertools.accumulate((_rows(values) for values in parts), initial=0))
        return [outputs[a:b] for a, b in itertools.pairwise(bounds)]

    def _alone(self, values: Values) -> np.ndarray | Exception:
        try:
            return self._timed_compute(values)
        except Exception as exc:  # noqa: BLE001 - see _compute_batch
            return exc

    def _timed_compute(self, values: Values) -> np.ndarray:
        rows = _rows(values)
        start = time.perf_counter()
        outputs = self._compute(values)
        seconds = time.perf_counter() - start
        self._metrics.batch_executed(rows, seconds)
        if self._inline is not None:  # what the same batch inline would cost
            self._inline.computed((_shape_key(values), rows), seconds)
        if len(outputs) != rows:
            raise RuntimeError(f"compute returned {len(outputs)} outputs for {rows} inputs")
        return outputs

    def _finish(self, slots: list[_Slot], future: asyncio.Future, started: float) -> None:
        self._in_flight -= 1
        self.admission.batch_done(time.perf_counter() - started)
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
        """Each output to its request; a request's future is set once all its rows are in."""
        for slot, output in zip(slots, outputs, strict=True):
            request = slot.request
            if isinstance(output, BaseException):
                if _fail(request, output):
                    self._withdraw(request)
            elif not request.future.done():
                request.put(slot.block, slot.first, output, slot.rows)


def _rows(values: Values) -> int:
    return len(values[0]) if isinstance(values, tuple) else len(values)


def _shape_key(values: Values) -> tuple:
    """Rows merge when every one of their arrays has the same shape past the batch axis."""
    if isinstance(values, tuple):
        return tuple(a.shape[1:] for a in values)
    return values.shape[1:]


def _item_key(item: Item) -> tuple:
    return tuple(a.shape for a in item) if isinstance(item, tuple) else item.shape


def _rows_slice(values: Values, start: int, stop: int) -> Values:
    if isinstance(values, tuple):
        return tuple(a[start:stop] for a in values)
    return values[start:stop]


def _queued_rows(group: deque[_Slot], enough: int) -> int:
    """Rows queued in a shape's group, counted until `enough`."""
    rows = 0
    for slot in group:
        rows += slot.rows
        if rows >= enough:
            break
    return rows


def _stack(items: list[Item]) -> Values:
    """Equal-shaped items as one block (per input, for several inputs)."""
    if isinstance(items[0], tuple):
        return tuple(np.stack(column) for column in zip(*items, strict=True))
    return np.stack(items)  # type: ignore[arg-type]


def _joined_values(parts: list[Values]) -> Values:
    """Blocks of one shape as one batch; a lone block as it is (no copy)."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(column) for column in zip(*parts, strict=True))
    return np.concatenate(parts)  # type: ignore[arg-type]


def _joined(parts: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """A block's outputs from the parts it was computed in."""
    if len(parts) == 1:
        return parts[0][1]
    return np.concatenate([output for _, output in sorted(parts, key=lambda p: p[0])])


def _fail(request: _Request, error: BaseException) -> bool:
    """Fail a request's future once; False when it was already done."""
    if request.future.done():
        return False
    request.future.set_exception(error)
    return True
