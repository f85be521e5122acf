"""Resumable sessions: a session's state sealed into a token any replica sharing the session key
can continue from (session_tokens.py has the format), and the rules of when a token opens.

Off without a key file: checkpoints are refused saying so, and `SessionManager.resumable` is
False (the transports tell callers at open and in metadata).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .session_tokens import SessionKeys, SessionSnapshot


@dataclass(frozen=True)
class Checkpoint:
    """A sealed session: the token, the steps and messages it holds, when it stops opening."""

    token: bytes
    steps: int  # steps fed since open or reset
    messages: int  # steps and reset messages processed since first opened
    expires: float  # unix seconds


class Resumption:
    """Seals and opens session tokens under the shared keys. A token is at most `max_bytes`
    (the largest gRPC message: it travels in one); a session's state is bounded by the model's
    sequence-length limit where it keeps a prefix (recompute), by its layer sizes otherwise."""

    def __init__(self, keys: SessionKeys, ttl_s: float, max_bytes: int) -> None:
        self.keys = keys
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes

    @classmethod
    def from_file(cls, path: Path, ttl_s: float, max_bytes: int) -> Resumption:
        return cls(SessionKeys.from_file(path), ttl_s, max_bytes)

    def seal(self, snapshot: SessionSnapshot) -> Checkpoint:
        token = self.keys.seal(snapshot, max_bytes=self.max_bytes)
        expires = snapshot.created + self.ttl_s
        return Checkpoint(token, snapshot.steps, snapshot.messages, expires)

    def open(self, token: bytes, caller: str) -> SessionSnapshot:
        """The snapshot a token holds (refused: `BadResumeToken`, `ResumeTokenRefused`)."""
        return self.keys.open(
            token, caller=caller, now=time.time(), ttl_s=self.ttl_s, max_bytes=self.max_bytes
        )
