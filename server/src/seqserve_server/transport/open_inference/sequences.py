"""Triton's sequences over the session core: `sequence_id` names a session of a model,
`sequence_start` opens it, `sequence_end` closes it after its last request.

A sequence spans unary calls (and streams), so no stream's end closes it: one that stays idle
longer than its model's `session_idle_timeout_s` is closed at the next sequence request to any
model, which frees its state and its place under `max_sessions`. Requests of one sequence run
one at a time, in arrival order.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from .core_facade import Core, NotOpen, SequenceHandle

Key = tuple[str, int | str]


@dataclass
class OpenSequence:
    handle: SequenceHandle
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.monotonic)

    def expired(self, now: float) -> bool:
        return not self.lock.locked() and now - self.last_used > (
            self.handle.model.session_idle_timeout_s
        )


class Sequences:
    def __init__(self, core: Core) -> None:
        self._core = core
        self._open: dict[Key, OpenSequence] = {}

    def _sweep(self) -> None:
        now = time.monotonic()
        for key in [k for k, s in self._open.items() if s.expired(now)]:
            self._core.close(self._open.pop(key).handle)

    def start(
        self, model: str, version: int, sequence: int | str, k: int, statics: dict[str, np.ndarray]
    ) -> OpenSequence:
        """A new session for the id (`statics`: the model's static inputs); an open one of the
        same id is ended first (restarted)."""
        self._sweep()
        self.end((model, sequence))
        opened = OpenSequence(self._core.open_sequence(model, version, k, statics))
        self._open[(model, sequence)] = opened
        return opened

    def get(self, model: str, sequence: int | str) -> OpenSequence:
        self._sweep()
        found = self._open.get((model, sequence))
        if found is None:
            raise NotOpen(
                "parameters['sequence_id']",
                "an open sequence (send sequence_start=true on its first request)",
                f"{sequence!r}, which is not open on {model!r} (never started, ended or idle "
                "past the model's session_idle_timeout_s)",
            )
        found.last_used = time.monotonic()
        return found

    def end(self, key: Key) -> None:
        ended = self._open.pop(key, None)
        if ended is not None:
            self._core.close(ended.handle)

    def close_all(self) -> None:
        for key in list(self._open):
            self.end(key)
