"""Sessions that outlive their replica: sealed session state in a store every replica shares, for
callers that hold no token (Triton sequences; seqserve.v1 clients that keep only the session id).

`SessionStore` is what the core asks of the store: bytes by key, with a time to live, and two
compare-and-swap forms (`put(..., replacing=...)`, `delete(..., holding=...)`) so that one
replica, not two, continues a session. Its implementation lives outside the core (the server's
`redis_store.py`); the core never imports a store client. `SharedSessions` seals a session into
the store (`SessionManager.checkpoint`) and resumes one from it (`SessionManager.resume`): the
store only ever holds sealed tokens (core/session_tokens.py), so whoever reads it learns nothing
and cannot forge a state; what it can do is delete one, or replay a caller's older state within
the token's lifetime.

Keys (`sequence_key`, `session_key`):

    seqserve:seq:<model>:<sequence id as JSON>   Triton sequences: 42 or "weekly-7" (Triton's
                                                 integer 42 and string "42" are two sequences)
    seqserve:session:<session_id>                seqserve.v1 sessions (SessionOpened.session_id)

When it is written (`WriteMode`): `on-drain`, a stopping replica writes every open sequence and
session (its `App.stop`); `every-step`, a sequence is also written after each of its requests
(and deleted at its end), so it survives a crash of its replica, for one store write per step.
"""

from __future__ import annotations

import enum
import json
import logging
import re
from typing import TYPE_CHECKING, Protocol

from .errors import InvalidInput, NotOpen, Overloaded, SessionMoved, Unsupported

if TYPE_CHECKING:  # config.py reads WriteMode before TensorFlow is imported
    from .sessions import OpenSession, SessionManager

log = logging.getLogger(__name__)

PREFIX = "seqserve:"
SESSION_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")  # what session ids are made of (uuid4 hex now)
STORE_OFF = "this server keeps no shared session store: it was started without --session-store"


class SessionStore(Protocol):
    """Bytes by key in a store every replica reaches; every method may raise `StoreUnavailable`."""

    description: str  # what logs may name (no password)

    async def get(self, key: str) -> bytes | None:
        """The bytes under `key`, None if there are none (never written, deleted or expired)."""
        ...

    async def put(
        self, key: str, value: bytes, ttl_s: float, replacing: bytes | None = None
    ) -> bool:
        """Store `value` for `ttl_s` seconds. With `replacing`, only where the key holds exactly
        those bytes or nothing (compare-and-swap): whether it was stored."""
        ...

    async def delete(self, key: str, holding: bytes | None = None) -> bool:
        """Remove the key (with `holding`, only where it holds exactly those bytes): whether
        something was removed."""
        ...

    async def ping(self) -> None:
        """Raise `StoreUnavailable` unless the store answers."""
        ...

    async def close(self) -> None: ...


class StoreUnavailable(Overloaded):
    """The shared session store did not answer (UNAVAILABLE: retry, here or elsewhere). The
    message names no address or password."""

    reason = "SESSION_STORE_UNAVAILABLE"


class WriteMode(enum.StrEnum):
    ON_DRAIN = "on-drain"
    EVERY_STEP = "every-step"


def sequence_key(model: str, sequence: int | str) -> str:
    """A Triton sequence's key: the id as JSON, so the integer 42 and the string "42" differ."""
    return f"{PREFIX}seq:{model}:{json.dumps(sequence, ensure_ascii=False)}"


def session_key(session_id: str) -> str:
    return f"{PREFIX}session:{session_id}"


class SharedSessions:
    """Open sessions written to and taken from a `SessionStore`, sealed under the session key.

    A token in the store lives as long as it opens (`--session-token-ttl-s`)."""

    def __init__(self, store: SessionStore, sessions: SessionManager, write: WriteMode) -> None:
        if sessions.resumption is None:
            raise ValueError("a shared session store needs a session key (--session-key-file)")
        self.store = store
        self.sessions = sessions
        self.write = write
        self.ttl_s = sessions.resumption.ttl_s

    @property
    def every_step(self) -> bool:
        return self.write is WriteMode.EVERY_STEP

    async def put(
        self,
        key: str,
        session: OpenSession,
        caller: str,
        replacing: bytes | None = None,
        ttl_s: float | None = None,
    ) -> bytes | None:
        """Seal the session (bound to `caller`) and store it under `key` (for the token's life,
        or `ttl_s` if shorter): the token stored, or None where `replacing` was given and the
        key holds another token (another replica continued the session: this copy is stale)."""
        token = self.sessions.checkpoint(session, caller).token
        kept = self.ttl_s if ttl_s is None else min(ttl_s, self.ttl_s)
        if await self.store.put(key, token, kept, replacing):
            return token
        return None

    async def take(
        self, key: str, model: str, caller: str, keep: bool
    ) -> tuple[OpenSession, bytes] | None:
        """The session stored under `key`, resumed here for `caller` (None: nothing stored), and
        its token. Refused as `SessionManager.resume` refuses (expired, another caller's, a
        version this server does not serve): the token then stays for whoever it fits.
        `keep=False` removes the token once resumed, where it is still the one read; when
        another replica took it meanwhile, this one lets the session go (SessionMoved)."""
        token = await self.store.get(key)
        if token is None:
            return None
        session = self.sessions.resume(token, model, caller)
        if keep:
            return session, token
        try:
            taken = await self.store.delete(key, holding=token)
        except BaseException:
            self.sessions.close(session)
            raise
        if not taken:
            self.sessions.close(session)
            raise SessionMoved(
                "session moved: another replica continued it from the shared session store "
                "meanwhile; send the request again"
            )
        return session, token

    async def delete(self, key: str, holding: bytes | None = None) -> bool:
        return await self.store.delete(key, holding)

    async def keep(self, key: str, token: bytes) -> bool:
        """Store a token already sealed (a v1 session's handoff) under `key`: whether it was;
        a store that does not answer is logged, not raised (the caller has the token itself)."""
        try:
            return await self.store.put(key, token, self.ttl_s)
        except StoreUnavailable:
            log.warning("a handoff was not written to the session store (%s)", key)
            return False

    async def resume_session(self, session_id: str, model: str, caller: str) -> OpenSession:
        """The v1 session handed off under `session_id` (SessionOpen.resume_session_id), resumed
        here as its token would be (the token stays: as a token, it resumes again until it
        expires)."""
        field = "open.resume_session_id"
        if not SESSION_ID.fullmatch(session_id):
            shown = session_id if len(session_id) <= 64 else session_id[:64] + "..."
            raise InvalidInput(field, "a session id (SessionOpened.session_id)", repr(shown))
        taken = await self.take(session_key(session_id), model, caller, keep=True)
        if taken is None:
            raise NotOpen(
                field, "a session handed off to the shared session store",
                f"{session_id!r}, which is not in the store (never handed off, or expired)",
            )  # fmt: skip
        return taken[0]


def store_off() -> Unsupported:
    """What a request that needs the store is told on a server without one."""
    return Unsupported(STORE_OFF)
