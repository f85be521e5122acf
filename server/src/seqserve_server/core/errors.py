"""Domain errors of the serving core.

They carry what a caller needs to fix a request (the field, what was expected, what was got) and
know nothing of any transport: each protocol adapter maps them to its own status codes in one place.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# An absolute path: a slash not inside a word, URL or relative path, then directories.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])/(?:[^\s/'\"`:,;()\[\]<>]+/)+")


def without_paths(text: str) -> str:
    """The server's file system is not a caller's business: paths keep only their last part."""
    return _ABSOLUTE_PATH.sub("", text)


class SeqServeError(Exception):
    """Base of every error the core reports to a caller."""

    reason = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(SeqServeError):
    """The request's data does not fit the model's signature or limits."""

    reason = "INVALID_INPUT"

    def __init__(self, field: str, expected: str, got: str, message: str | None = None) -> None:
        super().__init__(message or f"{field}: expected {expected}, got {got}")
        self.field = field
        self.expected = expected
        self.got = got


class NotOpen(InvalidInput):
    """A request continues a sequence this server does not hold (never started, ended, idle past
    its timeout, or started on another replica): no state to continue from."""

    reason = "NOT_OPEN"


RESUME_TOKEN_FIELD = "open.resume"


class BadResumeToken(InvalidInput):
    """A resume token this service cannot read: empty, truncated, too long, not a token, sealed
    under a key it does not hold, tampered with or forged. Nothing is opened; the message says
    why and never echoes the token."""

    reason = "RESUME_TOKEN_INVALID"

    def __init__(self, got: str, message: str) -> None:
        super().__init__(RESUME_TOKEN_FIELD, "a resume token sealed by this service", got, message)


class ResumeTokenRefused(InvalidInput):
    """An authentic resume token that does not apply here or now: expired, sealed for another
    caller, or for another model, version, model file or step program."""

    reason = "RESUME_TOKEN_REFUSED"

    def __init__(self, expected: str, got: str, message: str) -> None:
        super().__init__(RESUME_TOKEN_FIELD, expected, got, message)


class AlreadyApplied(SeqServeError):
    """A retried request was applied to its session before, and its answer was too large to
    keep: answering it again is impossible, applying it again would be wrong."""

    reason = "ALREADY_APPLIED"


def shown(text: str, limit: int = 128) -> str:
    """`text` quoted for a message, cut to `limit` characters: request content echoed in an
    error must not make the error itself too large to deliver (gRPC drops a status past its
    header limit and the caller sees RESOURCE_EXHAUSTED instead)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


class ModelNotFound(SeqServeError):
    """No model (or no such version of it) is in the repository. `available`: the models that
    are, of which the transport keeps only those the caller may see (`visible_to`); `hint`:
    what else to say of a model the caller named (its versions, why it has none)."""

    reason = "MODEL_NOT_FOUND"

    def __init__(
        self, model: str, version: int = 0, available: tuple[str, ...] = (), hint: str = ""
    ) -> None:
        what = f"model {shown(model)}" + (f" version {version}" if version else "")
        said = hint or ", ".join(available)
        super().__init__(
            f"{what} is not in the repository" + (f" (available: {said})" * bool(said))
        )
        self.model = model
        self.version = version
        self.available = available
        self.hint = hint

    def visible_to(self, visible: Callable[[str], bool]) -> ModelNotFound:
        """The same refusal listing only the models `visible` lets the caller see."""
        kept = tuple(name for name in self.available if visible(name))
        return ModelNotFound(self.model, self.version, kept, self.hint)


class ModelNotReady(SeqServeError):
    """The model exists but cannot serve: it failed to load or is still loading."""

    reason = "MODEL_NOT_READY"

    def __init__(self, model: str, version: int, why: str, loading: bool = False) -> None:
        super().__init__(f"model {shown(model)} version {version} is not ready: {why}")
        self.model = model
        self.version = version
        self.loading = loading


class Unsupported(SeqServeError):
    """The operation does not apply to this model (e.g. a session on a one-to-one model)."""

    reason = "UNSUPPORTED"


class LimitExceeded(SeqServeError):
    """A quota is used up (e.g. open sessions), or memory ran out computing a request."""

    reason = "LIMIT_EXCEEDED"


class Overloaded(SeqServeError):
    """The model's queue is full: retry later or elsewhere."""

    reason = "OVERLOADED"


class LoadShed(SeqServeError):
    """Refused at once because the model cannot answer within the call's deadline: the queue
    ahead is too long for it, or (past capacity) it waited while newer calls were served first.
    Unlike `Overloaded`, the caller is told how long to stay away (`retry_after_s`)."""

    reason = "LOAD_SHED"

    def __init__(
        self, message: str, estimate_s: float, deadline_s: float, retry_after_s: float
    ) -> None:
        super().__init__(message)
        self.estimate_s = estimate_s
        self.deadline_s = deadline_s
        self.retry_after_s = retry_after_s


class RateLimited(LoadShed):
    """Refused at once because the caller is over the call rate its token allows."""

    reason = "RATE_LIMITED"


class SessionMoved(SeqServeError):
    """The server handed the session off (it is stopping, or its version leaves): the caller
    resumes it elsewhere from the handoff token it was sent."""

    reason = "SESSION_MOVED"


class DeadlineExpired(SeqServeError):
    """The caller's deadline passed before the work could run."""

    reason = "DEADLINE_EXPIRED"


class ModelLoadError(Exception):
    """A model file or config cannot be served; recorded on the model, never sent as-is."""
