"""Which calls the server starts at all, server-wide, before any model work (issue 25): a
concurrency limit kept where the event loop stays responsive, a fair queue by caller in front
of it, and refusals at once for calls whose deadline the queue cannot meet. Transport-free;
transport/front_door.py applies it to the unary inference calls of both protocols.

Why a front door as well as the batcher's admission (core/admission.py): the batcher orders only
the calls of one model, first in first out or newest first, whoever sent them; and every call
doing work takes turns on the one event loop, so past the loop's capacity more calls in
progress only make each slower (and the health checks behind them). The front door keeps the
calls doing work to what the loop and the batchers can carry, lets the rest wait where waiting
costs nothing, and chooses who goes next by caller. So:

- **A limit on calls in progress, driven by congestion.** Once per window the limit shrinks
  towards the calls in progress when the server is congested, and grows while calls wait and
  it is not (AIMD, as TCP's congestion window). Congested: the loop runs a timer more than
  `lag_target_s` late (`watch`: a cheap model under a flood, the loop is the bottleneck), or a
  model's batcher held more than a batch of rows waiting (`backlogged`: past the model's
  capacity more calls in progress only wait there, where no caller is preferred and newer
  calls overtake older ones). `min_limit` calls are always let in.
- **A fair queue by caller.** Calls past the limit wait (a future each, no loop work while
  they wait) in one queue per caller (the auth token's name, or the peer's address), and a
  free slot goes to the caller with the least service per unit of weight (start-time fair
  queueing). A caller flooding the server waits behind itself, not in front of others.
  Optional per-caller caps from the tokens file: `max_concurrent` calls in progress, `rate`
  calls per second (a token bucket with a one-second burst: past it, refused at once).
- **New sessions refused while congested.** A session is a standing claim on the loop and the
  model for as long as it lives: once the server has been congested for `SESSION_AFTER_S` (a
  standing overload, not the burst of a client opening many sessions at once),
  `admit_session` refuses new ones at once (with pushback), so the sessions already open keep
  their step latency; a resumed session (moved from another replica) is not refused.
- **Refused at once rather than late.** A call whose remaining deadline cannot cover its
  estimated wait (its place in its caller's queue at the measured completion rate) is refused
  before it waits (`LoadShed`, retry after that wait); one whose deadline would pass while it
  waits is refused when its turn comes. Calls without a deadline get `default_deadline_s`
  (0: none: they wait their turn and are never refused for time).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import LoadShed, RateLimited
from .observer import CallObserver, NullCallObserver

TICK_S = 0.005  # the lag monitor's timer
WINDOW_S = 0.1  # the limit is adjusted once per window, from the window's mean lag
DECREASE = 0.9  # multiplicative decrease of the limit when the loop lags
INCREASE = 0.05  # increase per window, as a fraction of the limit (at least one call)
SMOOTHING = 0.3  # weight of the newest window in the completion rate's moving average
IDLE_S = 1.0  # a caller with nothing in progress or queued for this long is forgotten
MIN_RETRY_AFTER_S = 0.005
SESSION_RETRY_AFTER_S = 1.0  # a refused new session: come back when this window has passed
SESSION_AFTER_S = 1.0  # congested this long: new sessions are refused
PEER_PREFIX = "peer:"  # callers without a token are named by this and their address


@dataclass(frozen=True)
class CallerPolicy:
    """A caller's share and caps (tokens file: `weight`, `max_concurrent`, `rate`)."""

    weight: float = 1.0
    max_concurrent: int = 0  # calls in progress at once; 0: no cap beyond the server's
    rate: float = 0.0  # calls per second, a burst of one second's worth; 0: no cap


@dataclass(frozen=True)
class CallAdmissionSettings:
    """The server's flags: `--min-call-limit`, `--max-concurrent-rpcs` (the ceiling),
    `--loop-lag-target-ms`, `--default-deadline-s`."""

    min_limit: int = 16
    max_limit: int = 1024
    lag_target_s: float = 0.010
    default_deadline_s: float = 0.0


@dataclass(eq=False)
class _Caller:
    """One caller's calls in progress, its queue and its fair-queueing clock."""

    name: str
    policy: CallerPolicy
    in_flight: int = 0
    served: float = 0.0  # start-time fair queueing's virtual time: calls started / weight
    waiting: deque[_Waiter] = field(default_factory=deque)
    tokens: float = 0.0  # the rate cap's bucket
    refilled: float = 0.0
    seen: float = 0.0


@dataclass(eq=False)
class _Waiter:
    caller: _Caller
    deadline: float | None  # time.monotonic()
    future: asyncio.Future[None]


class Ticket:
    """A started call; `CallAdmission.leave` it exactly once when the call ends."""

    __slots__ = ("caller",)

    def __init__(self, caller: _Caller) -> None:
        self.caller = caller


class CallAdmission:
    """The server-wide front door (see module doc). One per server, used on its event loop."""

    def __init__(
        self,
        settings: CallAdmissionSettings,
        policy: Callable[[str], CallerPolicy] | None = None,
        observer: CallObserver | None = None,
        backlogged: Callable[[], bool] = lambda: False,
    ) -> None:
        self.settings = settings
        self.policy = policy or self.default_policy
        self.observer: CallObserver = observer or NullCallObserver()
        self.backlogged = backlogged  # a model's batcher has more than a batch waiting
        self.backlog = False  # ... at the last window's end
        self.congested_windows = 0  # windows in a row that ended congested
        self.limit = float(max(settings.min_limit, 1))
        self.in_flight = 0
        self.queued = 0
        self.rate: float | None = None  # calls completed per second while calls waited
        self.lag_s = 0.0  # the last window's mean lag
        self._callers: dict[str, _Caller] = {}
        self._completed = 0
        self._window_start = time.monotonic()
        self._lags: list[float] = []

    @staticmethod
    def default_policy(caller: str) -> CallerPolicy:
        """Every caller alike: weight 1, no caps (no tokens file)."""
        return CallerPolicy()

    # -- the calls' side -----------------------------------------------------------------------

    async def enter(self, caller: str, remaining_s: float | None) -> Ticket:
        """Start a call of `caller` with `remaining_s` left of its deadline (None: none), at
        once or after its turn in the caller's queue; `LoadShed` when it cannot be in time or
        the caller is over its rate."""
        now = time.monotonic()
        who = self._caller(caller, now)
        self._take_token(who, now)
        if remaining_s is None and self.settings.default_deadline_s > 0:
            remaining_s = self.settings.default_deadline_s
        deadline = None if remaining_s is None else now + remaining_s
        if not who.waiting and self._may_start(who):
            return self._start(who)
        wait = self.estimate_s(who)
        if remaining_s is not None and wait > remaining_s:
            self.observer.shed("deadline")
            raise self._shed(who, wait, remaining_s)
        waiter = _Waiter(who, deadline, asyncio.get_running_loop().create_future())
        who.waiting.append(waiter)
        self.queued += 1
        try:
            await waiter.future
        except BaseException:
            if not waiter.future.done() or waiter.future.cancelled():
                self._forget(waiter)
            elif waiter.future.exception() is None:  # started, then cancelled: give it back
                self.leave(Ticket(who))
            raise
        self.observer.waited(time.monotonic() - now)
        return Ticket(who)

    def leave(self, ticket: Ticket) -> None:
        """A started call ended (answered, failed or cancelled): its slot goes to the next."""
        now = time.monotonic()
        ticket.caller.in_flight -= 1
        self.in_flight -= 1
        self._completed += 1
        ticket.caller.seen = now
        self._admit_waiting()

    def admit_session(self) -> None:
        """Raise `LoadShed` when a new session should not start now (congested for a while)."""
        if self.congested_windows * WINDOW_S < SESSION_AFTER_S or not self.congested():
            return
        self.observer.shed("session")
        why = (
            f"the event loop runs {self.lag_s * 1e3:.0f} ms late"
            if self.lag_s > self.settings.lag_target_s
            else "a model's queue holds more than a batch"
        )
        raise LoadShed(
            f"the server is past capacity ({why}): new sessions are refused until it catches "
            "up, open sessions go on",
            estimate_s=0.0, deadline_s=0.0, retry_after_s=SESSION_RETRY_AFTER_S,
        )  # fmt: skip

    def estimate_s(self, who: _Caller) -> float:
        """How long a new call of `who` would wait for a slot: its caller's queue ahead of it
        and its share of the slots, at the measured completion rate (0 until measured)."""
        if not self.rate:
            return 0.0
        weights = sum(
            c.policy.weight for c in self._callers.values() if c is who or c.waiting or c.in_flight
        )
        share = who.policy.weight / weights
        return (len(who.waiting) + 1) / (self.rate * share)

    # -- the limit's side ----------------------------------------------------------------------

    async def watch(self) -> None:
        """Measure the loop's lag and adjust the limit once per window, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(TICK_S)
            self.observe_lag(max(0.0, loop.time() - before - TICK_S))

    def observe_lag(self, lag_s: float) -> None:
        """One tick's lag; at the end of a window, the limit and the completion rate move."""
        self._lags.append(lag_s)
        now = time.monotonic()
        elapsed = now - self._window_start
        if elapsed < WINDOW_S:
            return
        self.lag_s = sum(self._lags) / len(self._lags)
        self._lags.clear()
        self._measure_rate(elapsed)
        self.backlog = self.backlogged()
        self._window_start = now
        self._adjust()
        self._forget_idle(now)
        self._admit_waiting()
        self._report()

    def _report(self) -> None:
        state = {
            "limit": self.limit,
            "in_flight": self.in_flight,
            "queued": self.queued,
            "loop_lag_seconds": self.lag_s,
            "estimated_wait_seconds": self.queued / self.rate if self.rate else 0.0,
        }
        self.observer.window(state, {c.name: c.in_flight for c in self._callers.values()})

    def _measure_rate(self, elapsed: float) -> None:
        """Completions per second, measured only while calls waited (the server was full):
        at light load completions follow arrivals and say nothing of capacity."""
        completed, self._completed = self._completed, 0
        if not self.queued:
            return
        rate = completed / elapsed
        self.rate = rate if self.rate is None else self.rate + SMOOTHING * (rate - self.rate)

    def congested(self) -> bool:
        """The loop lags, or a model's batcher is backlogged (see module doc)."""
        return self.lag_s > self.settings.lag_target_s or self.backlog

    def _adjust(self) -> None:
        self.congested_windows = self.congested_windows + 1 if self.congested() else 0
        if self.congested_windows:
            self.limit = max(self.settings.min_limit, min(self.limit, self.in_flight) * DECREASE)
        elif self.queued and self.lag_s < self.settings.lag_target_s / 2:
            ceiling = float(self.settings.max_limit)
            self.limit = min(ceiling, self.limit + max(1.0, self.limit * INCREASE))

    # -- bookkeeping ---------------------------------------------------------------------------

    def _caller(self, name: str, now: float) -> _Caller:
        who = self._callers.get(name)
        if who is None:
            policy = self.policy(name)
            who = self._callers[name] = _Caller(name, policy, served=self._virtual_floor())
            who.tokens, who.refilled = policy.rate, now
        who.seen = now
        return who

    def _take_token(self, who: _Caller, now: float) -> None:
        rate = who.policy.rate
        if rate <= 0:
            return
        who.tokens = min(rate, who.tokens + (now - who.refilled) * rate)
        who.refilled = now
        if who.tokens < 1:
            self.observer.shed("rate")
            wait = (1 - who.tokens) / rate
            raise RateLimited(
                f"caller {who.name} is over its rate of {rate:g} calls per second",
                estimate_s=wait, deadline_s=0.0, retry_after_s=max(wait, MIN_RETRY_AFTER_S),
            )  # fmt: skip
        who.tokens -= 1

    def _may_start(self, who: _Caller) -> bool:
        cap = who.policy.max_concurrent
        if cap and who.in_flight >= cap:
            return False
        return self.in_flight < self.limit

    def _start(self, who: _Caller) -> Ticket:
        who.in_flight += 1
        who.served = max(who.served, self._virtual_floor()) + 1 / who.policy.weight
        self.in_flight += 1
        return Ticket(who)

    def _virtual_floor(self) -> float:
        """The least service among callers with calls waiting: a caller that was away does not
        come back with credit banked to flood the others."""
        return min((c.served for c in self._callers.values() if c.waiting), default=0.0)

    def _admit_waiting(self) -> None:
        """Start waiting calls while slots are free: the caller least served per weight
        first; a waiter whose deadline has passed meanwhile is refused, not started."""
        now = time.monotonic()
        while self.queued:
            ready = [c for c in self._callers.values() if c.waiting and self._may_start(c)]
            if not ready:
                return
            who = min(ready, key=lambda c: c.served)
            waiter = who.waiting.popleft()
            self.queued -= 1
            if waiter.future.done():
                continue
            if waiter.deadline is not None and waiter.deadline <= now:
                self.observer.shed("expired")
                waiter.future.set_exception(self._shed(who, 0.0, 0.0))
                continue
            self._start(who)
            waiter.future.set_result(None)

    def _forget(self, waiter: _Waiter) -> None:
        try:
            waiter.caller.waiting.remove(waiter)
        except ValueError:
            return
        self.queued -= 1

    def _forget_idle(self, now: float) -> None:
        idle = [
            name
            for name, c in self._callers.items()
            if not c.in_flight and not c.waiting and now - c.seen > IDLE_S
            and (c.policy.rate <= 0 or c.tokens >= c.policy.rate)
        ]  # fmt: skip
        for name in idle:
            del self._callers[name]

    def _shed(self, who: _Caller, wait_s: float, remaining_s: float) -> LoadShed:
        retry = max(wait_s, len(who.waiting) / self.rate if self.rate else 0.0, MIN_RETRY_AFTER_S)
        return LoadShed(
            f"the server is past capacity: a call of {who.name} would start in about "
            f"{wait_s * 1e3:.0f} ms ({self.in_flight} calls in progress, {self.queued} waiting), "
            f"past its deadline in {max(remaining_s, 0) * 1e3:.0f} ms",
            estimate_s=wait_s,
            deadline_s=max(remaining_s, 0.0),
            retry_after_s=retry if math.isfinite(retry) else 1.0,
        )
