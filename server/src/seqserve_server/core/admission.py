"""Who gets a model's capacity, and when to say no at once (issue 25): the policy each model
version's `DynamicBatcher` consults. Transport-free; the batcher keeps the queue, this module
decides.

Under more traffic than a model can compute, a first-in first-out queue collapses: every call
waits behind calls whose deadlines pass while they wait, so the cores are spent on answers that
arrive too late (measured: 1,024 callers with 250 ms deadlines got 8% of capacity). Three rules
keep the server computing at capacity for calls it can still answer in time, and tell the rest
at once, with a `retry_after_s` the transport sends as gRPC's `grpc-retry-pushback-ms`:

- **Admission by deadline.** A call whose remaining deadline cannot cover the estimated wait and
  compute (rows queued ahead, measured time per batch, batches in flight, `max_in_flight`) is
  refused before it is queued (`LoadShed`). A call without a deadline gets the default budget
  (`default_deadline_s`; 0: none). With nothing queued and a slot free a call is always taken,
  so one slow batch can never lock a model out.
- **Adaptive LIFO.** While more than one batch of rows waits, the newest rows are served first:
  they are the ones whose callers are still waiting, and they leave well inside their deadline.
  With one batch or less waiting the order is first-in first-out, as before.
- **CoDel-style shedding.** When the queue has not been empty for `INTERVAL_S` (a standing
  queue, not a burst), rows that waited longer than `queue_target_s`, or two batch times when
  that is longer (a batch must have time to fill), plus the model's `max_queue_delay_ms`, are
  shed when their remaining deadline cannot cover the time the queue takes to drain: under
  LIFO they would only be served once their caller had given up. A call that can still be
  answered in time, or has no deadline, is never shed (its work is not thrown away because
  newer calls overtook it). `queue_target_s` 0 turns LIFO and shedding off.

The time per batch is measured on the event loop from a batch's start to its end (compute,
the hand-off to the compute thread and back, and the loop's own delay), not the compute alone:
past capacity the loop, not the model, is often what limits a Python server.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import LoadShed

INTERVAL_S = 0.1  # CoDel's interval: a queue not empty for this long is a standing queue
SMOOTHING = 0.2  # weight of the newest batch in the moving average of batch times
MIN_RETRY_AFTER_S = 0.005  # pushback floor: never tell a caller to come back at once
# Pushback is the time the queue ahead takes to drain, not the shortfall against the deadline:
# with the shortfall (often a few ms at the admission boundary) every refused caller of a
# closed loop came back at once and the loop spent itself refusing (measured in-process).


@dataclass(frozen=True)
class AdmissionSettings:
    """The server's flags (`--default-deadline-s`, `--queue-target-ms`); a model's config
    overrides the default deadline (`default_deadline_s`, 0: the server's)."""

    default_deadline_s: float = 0.0
    queue_target_s: float = 0.005

    def for_model(self, default_deadline_s: float) -> AdmissionSettings:
        """These settings with a model's own default deadline, when it states one."""
        if not default_deadline_s:
            return self
        return AdmissionSettings(default_deadline_s, self.queue_target_s)


class Admission:
    """One model version's admission and queue policy (see module doc). Times are seconds on
    one clock (the batcher's `time.perf_counter()`), deadlines on `time.monotonic()`."""

    def __init__(
        self,
        settings: AdmissionSettings,
        max_batch_size: int,
        max_in_flight: int,
        name: str = "model",
        max_queue_delay_s: float = 0.0,
    ) -> None:
        self.settings = settings
        self.max_batch_size = max_batch_size
        self.max_in_flight = max_in_flight
        self.max_queue_delay_s = max_queue_delay_s  # rows wait this long on purpose: never shed
        self.name = name
        self.batch_s: float | None = None  # moving average of a batch's time; None: unmeasured
        self._empty_at = -math.inf  # when the queue was last seen empty

    # -- measurements --------------------------------------------------------------------------

    def batch_done(self, seconds: float) -> None:
        """A batch took `seconds` from its start to its end, as the event loop saw it."""
        if self.batch_s is None:
            self.batch_s = seconds
        else:
            self.batch_s += SMOOTHING * (seconds - self.batch_s)

    def queue_seen(self, queued_rows: int, now: float) -> None:
        """The queue's depth changed; an empty queue restarts the standing-queue clock."""
        if not queued_rows:
            self._empty_at = now

    # -- decisions -----------------------------------------------------------------------------

    def deadline(self, deadline: float | None, now_monotonic: float) -> float | None:
        """The call's own deadline, or the default budget from now (None: no deadline)."""
        if deadline is None and self.settings.default_deadline_s > 0:
            return now_monotonic + self.settings.default_deadline_s
        return deadline

    def estimate_s(self, queued_rows: int, rows: int, in_flight: int) -> float:
        """Seconds until a call of `rows` rows, queued behind `queued_rows`, would be computed:
        its batch and every batch ahead of it (those running count whole), `max_in_flight`
        at a time, each taking the measured time per batch."""
        if self.batch_s is None:
            return 0.0
        batches = math.ceil((queued_rows + rows) / self.max_batch_size) + in_flight
        return math.ceil(batches / self.max_in_flight) * self.batch_s

    def admit(
        self, deadline: float | None, now_monotonic: float, queued_rows: int, rows: int,
        in_flight: int,
    ) -> None:  # fmt: skip
        """Raise `LoadShed` when the call's deadline cannot cover the estimate; a call that
        would start at once (nothing queued, a slot free) is always admitted."""
        if deadline is None or (not queued_rows and in_flight < self.max_in_flight):
            return
        remaining = deadline - now_monotonic
        estimate = self.estimate_s(queued_rows, rows, in_flight)
        if estimate <= remaining:
            return
        raise LoadShed(
            f"model {self.name} would answer in about {estimate * 1e3:.0f} ms ({queued_rows} "
            f"rows queued, {in_flight} batches computing), past the call's deadline in "
            f"{max(remaining, 0) * 1e3:.0f} ms",
            estimate_s=estimate,
            deadline_s=max(remaining, 0.0),
            retry_after_s=max(estimate, MIN_RETRY_AFTER_S),
        )

    def newest_first(self, queued_rows: int) -> bool:
        """Adaptive LIFO: serve the newest rows first while more than one batch waits."""
        return self.settings.queue_target_s > 0 and queued_rows > self.max_batch_size

    def sojourn_limit_s(self, queued_rows: int, now: float) -> float | None:
        """How long a row may wait before it is shed; None (no limit) unless the queue has
        been standing for `INTERVAL_S`."""
        target = self.settings.queue_target_s
        if target <= 0 or not queued_rows or now - self._empty_at < INTERVAL_S:
            return None
        return max(target, 2 * (self.batch_s or 0.0)) + self.max_queue_delay_s

    def shed_waiting(self, waited_s: float, remaining_s: float | None, drain_s: float) -> LoadShed:
        """The refusal of rows that waited `waited_s` past the limit under a standing queue
        (`remaining_s`: what was left of the call's deadline, None: it had none; `drain_s`:
        the estimated time the queue takes to drain, the pushback)."""
        left = "no deadline" if remaining_s is None else f"{remaining_s * 1e3:.0f} ms left"
        return LoadShed(
            f"model {self.name} is past capacity: the call waited {waited_s * 1e3:.0f} ms in "
            f"its queue ({left}) while newer calls were served first",
            estimate_s=waited_s,
            deadline_s=remaining_s or 0.0,
            retry_after_s=max(drain_s, self.batch_s or 0.0, MIN_RETRY_AFTER_S),
        )
