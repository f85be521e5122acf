"""Triton's sequences over the session core: `sequence_id` names a session of a model,
`sequence_start` opens it, `sequence_end` closes it after its last request.

A sequence spans unary calls (and streams), so no stream's end closes it: one that stays idle
longer than its model's `session_idle_timeout_s` is closed at the next sequence request to any
model, which frees its state and its place under `max_sessions`. Requests of one sequence run
one at a time, in arrival order (its lock, taken before the request's first wait).

With a shared session store (`--session-store`, core/session_store.py), a sequence outlives its
replica: a stopping replica writes every open sequence to the store (`hand_off_all`, then
refuses their requests UNAVAILABLE "sequence moved"), and a replica that gets a request for a
sequence it does not hold takes it from the store before it would refuse (`ready`: under the
sequence's lock, so one replica resumes it once). With `every-step` writes, each request's new
state is written before it is answered (`written`) and the sequence's end deletes it, so a crash
loses nothing answered; a replica whose write finds another replica's token there (that replica
continued the sequence from the store) drops its stale copy and answers UNAVAILABLE, and the
resent request continues from the store. A sequence started here clears what the store held
under its id (a restarted id must not continue an older sequence).

Exactly once: a request with an `id` is remembered with its answer in the sequence's state
(requests.py `retry_key`: the id and the content), so when a replica applied it, wrote the new
state and died before answering, or the answer was lost on the way, the caller's retry (the
same request) is answered again from the state instead of applied twice. The last request of a
sequence (`sequence_end`) leaves its answer in the store for `ENDED_KEPT_S` (every-step writes)
for the same reason; any other request of that id is refused as not open. Requests without an
id cannot be told from a retry: a retry after a crash may apply them twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from .core_facade import Core, NotOpen, SequenceHandle, SessionMoved, StoreUnavailable

log = logging.getLogger(__name__)

Key = tuple[str, int | str]  # (model, sequence id)
ENDED = "ended/"  # the remembered request ended its sequence
ENDED_KEPT_S = 300.0  # how long an ended sequence's last answer stays in the store for a retry


@dataclass
class OpenSequence:
    handle: SequenceHandle | None  # None until taken from the store (`Sequences.ready`)
    caller: str = ""  # who started it (auth's token name): what its stored state is bound to
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.monotonic)
    fresh: bool = False  # started here; the store not yet cleared or written for it
    stored: bytes | None = None  # every-step: the token last written or taken (None: unknown)
    gone: str = ""  # why this copy must not be fed: it moved to the store or another replica

    def expired(self, now: float) -> bool:
        return (
            not self.lock.locked()
            and self.handle is not None
            and now - self.last_used > self.handle.model.session_idle_timeout_s
        )


class Sequences:
    def __init__(self, core: Core) -> None:
        self._core = core
        self._open: dict[Key, OpenSequence] = {}
        self.moving = ""  # set once the server hands its sequences to the store (stopping)

    def _sweep(self) -> None:
        now = time.monotonic()
        for key in [k for k, s in self._open.items() if s.expired(now)]:
            self._close(self._open.pop(key))

    def start(
        self,
        model: str,
        version: int,
        sequence: int | str,
        k: int,
        statics: dict[str, np.ndarray],
        caller: str = "",
    ) -> OpenSequence:
        """A new session for the id (`statics`: the model's static inputs); an open one of the
        same id is ended first (restarted)."""
        self._sweep()
        self._refuse_while_moving(sequence)
        self.end((model, sequence))
        handle = self._core.open_sequence(model, version, k, statics)
        opened = OpenSequence(handle, caller, fresh=self._core.stores_sequences)
        self._open[(model, sequence)] = opened
        return opened

    def get(self, model: str, sequence: int | str) -> OpenSequence:
        """The open sequence; with a store, one not held here is a placeholder that `ready`
        takes from the store (requests of it that come meanwhile queue on its lock)."""
        self._sweep()
        self._refuse_while_moving(sequence)
        key = (model, sequence)
        found = self._open.get(key)
        if found is None:
            if not self._core.stores_sequences:
                raise _not_open(model, sequence, "")
            found = self._open[key] = OpenSequence(None)
        found.last_used = time.monotonic()
        return found

    async def ready(self, key: Key, opened: OpenSequence, caller: str) -> SequenceHandle:
        """Under the sequence's lock, before a request is fed: its handle, taken from the store
        first where it is not held here; a sequence started here clears the store's old state
        of its id (on-drain writes: every-step overwrites it after this request)."""
        if opened.gone:
            raise SessionMoved(opened.gone)
        if opened.handle is None:
            if self.moving:
                raise SessionMoved(_moving(key[1], self.moving))
            return await self._take(key, opened, caller)
        if opened.fresh and not self._core.stores_every_step:
            opened.fresh = False
            try:
                await self._core.unstore_sequence(*key)
            except StoreUnavailable:
                log.warning("sequence %r of %r: its old stored state stays", key[1], key[0])
        return opened.handle

    async def _take(self, key: Key, opened: OpenSequence, caller: str) -> SequenceHandle:
        model, sequence = key
        try:
            taken = await self._core.take_sequence(model, sequence, caller)
        except BaseException:
            self._forget(key, opened)
            raise
        if taken is None:
            self._forget(key, opened)
            raise _not_open(model, sequence, " nor in the shared session store")
        handle, token = taken
        if self._open.setdefault(key, opened) is not opened:  # restarted meanwhile
            self._core.close(handle)
            raise _not_open(model, sequence, " (restarted with sequence_start meanwhile)")
        opened.handle, opened.caller = handle, caller
        opened.stored = token if self._core.stores_every_step else None
        log.info("sequence %r of %r continued from the shared session store", sequence, model)
        return handle

    def replayed(
        self, key: Key, opened: OpenSequence, handle: SequenceHandle, retry: str
    ) -> bytes | None:
        """The answer kept for a retried request, or None for a new one; a sequence that
        ended (its last answer kept for a retry) is closed and refused to anything else."""
        if not self._core.last_request(handle).startswith(ENDED):
            return self._core.replayed(handle, retry)
        self._forget(key, opened)
        reply = self._core.replayed(handle, ENDED + retry) if retry else None
        if reply is None:
            raise _not_open(key[0], key[1], " (it ended with sequence_end)")
        return reply

    def remember(self, handle: SequenceHandle, retry: str, end: bool, reply: bytes) -> None:
        """The request just applied and its answer, kept in the sequence's state."""
        self._core.remember(handle, ENDED + retry if end and retry else retry, reply)

    async def written(self, key: Key, opened: OpenSequence, end: bool, fed: bool) -> None:
        """Every-step writes, under the sequence's lock after a request: the new state to the
        store (before the answer leaves), or at the sequence's end its removal (or its last
        answer, kept `ENDED_KEPT_S` for a retry). A write that finds another replica's state
        there drops this copy (SessionMoved: send it again)."""
        handle = opened.handle
        if not self._core.stores_every_step or handle is None or opened.gone:
            return
        try:
            if end and not (fed and self._core.last_request(handle).startswith(ENDED)):
                current = await self._core.unstore_sequence(*key, holding=opened.stored)
                stale = not current and opened.stored is not None
                token = None if stale else opened.stored
            elif fed or opened.fresh:
                ttl_s = ENDED_KEPT_S if end else None
                token = await self._core.store_sequence(
                    *key, handle, opened.caller, replacing=opened.stored, ttl_s=ttl_s
                )
                stale = token is None
            else:
                return  # nothing changed
        except StoreUnavailable:
            # The step is done and answered; the store catches up at the next write (which then
            # replaces whatever is there: the reply of this one may have been lost).
            log.warning("sequence %r of %r: not written to the session store", key[1], key[0])
            opened.stored = None
            return
        opened.fresh = False
        if stale:
            opened.gone = (
                f"sequence {key[1]!r} moved: another replica continued it from the shared "
                "session store; send the request again"
            )
            self._forget(key, opened)
            raise SessionMoved(opened.gone)
        opened.stored = token

    async def hand_off_all(self, why: str) -> int:
        """The server is stopping: write every open sequence to the store (each after the
        request it is computing), then refuse their requests (UNAVAILABLE, "sequence moved")
        and new ones; how many were written."""
        if not self._core.stores_sequences:
            return 0
        self.moving = why
        entries = list(self._open.items())
        written = await asyncio.gather(*(self._hand_off(k, o) for k, o in entries))
        return sum(written)

    async def _hand_off(self, key: Key, opened: OpenSequence) -> bool:
        async with opened.lock:
            handle = opened.handle
            if opened.gone or handle is None:
                return False
            opened.gone = _moving(key[1], self.moving)
            replacing = opened.stored if self._core.stores_every_step else None
            try:
                token = await self._core.store_sequence(*key, handle, opened.caller, replacing)
            except StoreUnavailable:
                log.warning("sequence %r of %r lost: the store did not answer", key[1], key[0])
                return False
            finally:
                self._forget(key, opened)
            return token is not None

    def end(self, key: Key, opened: OpenSequence | None = None) -> None:
        """Close the sequence's session (`opened`: only if it is still that one)."""
        current = self._open.get(key)
        if current is not None and (opened is None or current is opened):
            self._close(self._open.pop(key))

    def close_all(self) -> None:
        for key in list(self._open):
            self.end(key)

    def _forget(self, key: Key, opened: OpenSequence) -> None:
        """Let go of this copy of the sequence (its state freed)."""
        if self._open.get(key) is opened:
            del self._open[key]
        self._close(opened)

    def _close(self, opened: OpenSequence) -> None:
        if opened.handle is not None:
            self._core.close(opened.handle)

    def _refuse_while_moving(self, sequence: int | str) -> None:
        if self.moving:
            raise SessionMoved(_moving(sequence, self.moving))


def _moving(sequence: int | str, why: str) -> str:
    return (
        f"sequence {sequence!r} moved: {why}; its state is in the shared session store, "
        "send the request to another replica"
    )


def _not_open(model: str, sequence: int | str, where: str) -> NotOpen:
    return NotOpen(
        "parameters['sequence_id']",
        "an open sequence (send sequence_start=true on its first request)",
        f"{sequence!r}, which is not open on {model!r}{where} (never started, ended or idle "
        "past the model's session_idle_timeout_s)",
    )
