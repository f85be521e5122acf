"""The server-wide front door (core/call_admission.py), in-process: who starts when past the
limit, fair shares by weight, per-caller caps, refusals with pushback, and the lag-driven limit."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from seqserve_server.core.call_admission import (
    CallAdmission,
    CallAdmissionSettings,
    CallerPolicy,
)
from seqserve_server.core.errors import LoadShed, RateLimited


def admission(limit: int, **policies: CallerPolicy) -> CallAdmission:
    settings = CallAdmissionSettings(min_limit=limit, max_limit=4 * limit, lag_target_s=0.01)
    return CallAdmission(settings, lambda name: policies.get(name, CallerPolicy()))


class Recorder:
    """Shed reasons and waits, as the metrics would see them."""

    def __init__(self) -> None:
        self.sheds: Counter[str] = Counter()
        self.waits: list[float] = []

    def shed(self, reason: str) -> None:
        self.sheds[reason] += 1

    def waited(self, seconds: float) -> None:
        self.waits.append(seconds)

    def window(self, state: dict[str, float], callers: dict[str, int]) -> None:
        pass


def started_order(door: CallAdmission, calls: list[str], slots_to_free: int) -> list[str]:
    """Queue `calls` (caller names) behind a full door, free `slots_to_free` slots one by one;
    the callers in the order their calls started."""

    async def main() -> list[str]:
        held = [await door.enter("holder", None) for _ in range(int(door.limit))]
        order: list[str] = []
        tickets: list[Any] = []

        async def call(name: str) -> None:
            tickets.append(await door.enter(name, None))
            order.append(name)

        tasks = []
        for name in calls:
            tasks.append(asyncio.create_task(call(name)))
            await asyncio.sleep(0)  # arrival order is the list's
        for ticket in held[:slots_to_free]:
            door.leave(ticket)
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return order

    return asyncio.run(main())


def test_calls_under_the_limit_start_at_once_and_the_rest_wait_their_turn() -> None:
    door = admission(4)

    async def main() -> None:
        tickets = [await door.enter("a", 1.0) for _ in range(4)]
        assert door.in_flight == 4
        waiting = asyncio.create_task(door.enter("a", 1.0))
        await asyncio.sleep(0.01)
        assert not waiting.done() and door.queued == 1
        door.leave(tickets[0])
        ticket = await asyncio.wait_for(waiting, 1)
        assert (door.in_flight, door.queued) == (4, 0)
        for t in [*tickets[1:], ticket]:
            door.leave(t)
        assert door.in_flight == 0

    asyncio.run(main())


def test_a_flooding_caller_waits_behind_itself_not_in_front_of_others() -> None:
    door = admission(2)
    order = started_order(door, ["flood"] * 20 + ["light"], slots_to_free=2)
    # The light caller's one call arrived after twenty of the flood's, yet starts among the
    # first two freed slots.
    assert "light" in order[:2]


def test_slots_go_to_callers_in_proportion_to_their_weights() -> None:
    door = admission(1, heavy=CallerPolicy(weight=3))
    calls = [name for _ in range(40) for name in ("heavy", "light")]

    async def main() -> Counter[str]:
        holder = await door.enter("holder", None)
        started: Counter[str] = Counter()

        async def call(name: str) -> None:
            ticket = await door.enter(name, None)
            started[name] += 1
            await asyncio.sleep(0)
            door.leave(ticket)  # the one slot passes straight on

        tasks = [asyncio.create_task(call(name)) for name in calls]
        await asyncio.sleep(0)
        door.leave(holder)
        while sum(started.values()) < 40:
            await asyncio.sleep(0)
        first_forty = Counter(started)
        await asyncio.gather(*tasks)
        return first_forty

    first_forty = asyncio.run(main())
    assert first_forty["heavy"] == pytest.approx(30, abs=2), first_forty


def test_a_caller_over_its_max_concurrent_waits_while_others_start() -> None:
    door = admission(8, capped=CallerPolicy(max_concurrent=2))

    async def main() -> None:
        mine = [await door.enter("capped", 1.0) for _ in range(2)]
        third = asyncio.create_task(door.enter("capped", 1.0))
        await asyncio.sleep(0.01)
        assert not third.done() and door.in_flight == 2  # six slots free, still not started
        other = await door.enter("other", 1.0)  # another caller is not held behind it
        door.leave(mine[0])
        door.leave(await asyncio.wait_for(third, 1))
        for t in (mine[1], other):
            door.leave(t)

    asyncio.run(main())


def test_a_caller_over_its_rate_is_refused_at_once_with_pushback() -> None:
    door = admission(8, limited=CallerPolicy(rate=5))

    async def main() -> None:
        tickets = [await door.enter("limited", 1.0) for _ in range(5)]
        with pytest.raises(RateLimited) as refused:
            await door.enter("limited", 1.0)
        assert refused.value.reason == "RATE_LIMITED"
        assert 0.1 <= refused.value.retry_after_s <= 0.25  # one token comes back in 0.2 s
        assert "5 calls per second" in str(refused.value)
        tickets.append(await door.enter("other", 1.0))  # others are not limited by it
        await asyncio.sleep(0.25)
        tickets.append(await door.enter("limited", 1.0))
        for t in tickets:
            door.leave(t)

    asyncio.run(main())


def test_a_call_the_queue_cannot_serve_in_time_is_refused_before_it_waits() -> None:
    door = admission(2)
    door.observer = recorder = Recorder()

    async def main() -> None:
        held = [await door.enter("a", None) for _ in range(2)]
        waiting = [asyncio.create_task(door.enter("a", None)) for _ in range(50)]
        await asyncio.sleep(0.01)
        door.rate = 100.0  # measured: 100 calls complete per second
        with pytest.raises(LoadShed) as refused:
            await door.enter("a", 0.1)  # 51st in line: ~0.5 s away, 0.1 s left
        assert refused.value.estimate_s == pytest.approx(0.51)
        assert refused.value.retry_after_s >= 0.5
        assert "past its deadline" in str(refused.value)
        in_time = asyncio.create_task(door.enter("a", 2.0))  # 2 s covers it: it waits
        await asyncio.sleep(0.01)
        assert not in_time.done()
        for task in [*waiting, in_time]:
            task.cancel()
        await asyncio.gather(*waiting, in_time, return_exceptions=True)
        assert door.queued == 0  # cancelled waiters leave the queue
        for t in held:
            door.leave(t)
        assert door.in_flight == 0

    asyncio.run(main())
    assert recorder.sheds == Counter({"deadline": 1})


def test_a_waiter_whose_deadline_passed_is_refused_when_its_turn_comes_not_started() -> None:
    door = admission(1)
    door.observer = recorder = Recorder()

    async def main() -> None:
        held = await door.enter("a", None)
        late = asyncio.create_task(door.enter("a", 0.02))
        await asyncio.sleep(0.05)
        door.leave(held)
        with pytest.raises(LoadShed):
            await late
        assert (door.in_flight, door.queued) == (0, 0)

    asyncio.run(main())
    assert recorder.sheds == Counter({"expired": 1})


def test_the_limit_shrinks_while_the_loop_lags_and_grows_back_while_calls_wait() -> None:
    door = admission(4)
    door.settings = CallAdmissionSettings(min_limit=4, max_limit=64, lag_target_s=0.01)
    door.limit = 40.0
    door.in_flight = 30
    door._window_start -= 1  # the window is over: the next tick adjusts
    door.observe_lag(0.05)
    assert door.limit == pytest.approx(27.0)  # towards the calls in progress, x0.9
    for _ in range(40):
        door._window_start -= 1
        door.observe_lag(0.05)
    assert door.limit == 4  # never below the minimum
    door.queued = 1  # calls wait and the loop keeps up: the limit grows
    door._window_start -= 1
    door.observe_lag(0.001)
    assert door.limit == 5
    door.queued = 0  # nothing waits: no reason to grow
    door._window_start -= 1
    door.observe_lag(0.001)
    assert door.limit == 5


def test_new_sessions_are_refused_while_congested_and_taken_again_after() -> None:
    door = admission(4)
    door.admit_session()  # uncongested: taken
    door.lag_s = 0.05  # the loop runs 50 ms late (target 10 ms)
    door.admit_session()  # a burst, not yet a standing overload
    door.congested_windows = 10  # a second of it
    with pytest.raises(LoadShed) as refused:
        door.admit_session()
    assert "new sessions are refused" in str(refused.value)
    assert "50 ms late" in str(refused.value)
    assert refused.value.retry_after_s >= 0.5
    door.lag_s = 0.0
    door.backlog = True  # a model's batcher holds more than a batch waiting
    with pytest.raises(LoadShed, match="a model's queue holds more than a batch"):
        door.admit_session()
    door.backlog = False
    door.admit_session()
