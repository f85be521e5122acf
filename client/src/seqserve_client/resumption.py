"""Sessions that outlive their replica (issue 23), without I/O: the replay buffer, the newest
resume token, and what a failure or a handoff means for a resumable session.

The wire's rules (seqserve.v1 `SessionOpen.resume`, `checkpoint_every`, `SessionCheckpoint`,
`SessionResponse.handoff`): every `steps` and `reset` message of a session has an index, 0, 1,
... counted from its first open and across resumes (`end_input` and checkpoint requests have
none); a checkpoint's `messages` is how many of them the state it seals holds, so continuing it
exactly means sending again every message whose index is that or more.

What a resumable session keeps (`Replay`): the newest token it read (a `checkpoint`, or the
`handoff` of a stopping server) and the steps and reset messages sent since that token's
`messages` (before the first checkpoint: all of them since open, the only exact way back being
to open afresh and replay from message 0), each with whether the server answers it.

The bound: the server checkpoints right after its answer to every steps message that brings the
steps since its last checkpoint to `checkpoint_every` or more, so a session whose messages are
all answered keeps at most `checkpoint_every` messages between calls (a checkpoint is read with
the next answer). The server does not answer every message (unaligned models; `emit_on_request`),
and the SDK never waits for what is not due, so checkpoints that follow unanswered messages stay
unread: once more than `checkpoint_every` messages are kept, the SDK asks for a checkpoint
(`SessionCheckpointRequest`) and reads up to it before the call returns. So after any call
returns a session keeps at most `checkpoint_every` messages; during a call, one more (the one in
flight), and while decoding its `end_input`.

Resuming, on a handoff or a lost connection (`lost_connection`): reconnect through the same
channel (whichever replica the target reaches; `Reconnect` bounds the attempts and spaces them),
open with `resume` = the newest token (no token yet: the first open again, pinned to the version
it opened on), check where the replica resumed (`resumed_at_message`), send again every kept
message from there, then the current call's `end_input` or checkpoint request. Calls are
lockstep (a call returns once its answer is read), so only the current call's answer can be
owed: the answers to the messages replayed before it, and the decoded parts the caller already
has, are read and dropped (`Replay.skip`, `Replay.drop_parts`); the rest is delivered. Each
output reaches the caller exactly once and in order.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from seqserve.v1 import seqserve_pb2 as pb

from .errors import SeqServeError, SessionLost

DEFAULT_CHECKPOINT_EVERY = 8  # steps between a resumable session's checkpoints: its replay bound
# grpc.aio's own status for a write that Core fails because the call has ended: it may replace
# the status the server sent (grpc/grpc#36066), and stands alone when none came.
CORE_WRITE_FAILURE = "Internal error from Core"
# What the server says when it refuses a resume token (SessionOpen.resume).
REFUSALS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)


@dataclass(frozen=True)
class Reconnect:
    """How a resumable session reconnects after a handoff or a lost connection: at most
    `attempts` opens before it gives up (`SessionLost`), counted since the last answer it
    delivered; the first at once, the next after `backoff_s`, doubling (`multiplier`) up to
    `max_backoff_s`, each delay scaled by a random factor in [1 - jitter, 1] so that the sessions
    of one replica do not all come back at the same instant. The defaults wait 0, ~0.1, ~0.2,
    ~0.4, ~0.8, ~1.6, then ~2 s (11 s at most in all): through a load balancer a reopen may reach
    the replica that is still draining (the server's grace period is 10 s by default)."""

    attempts: int = 10
    backoff_s: float = 0.1
    multiplier: float = 2.0
    max_backoff_s: float = 2.0
    jitter: float = 0.5


def backoff(
    policy: Reconnect, attempt: int, uniform: Callable[[float, float], float] = random.uniform
) -> float:
    """Seconds to wait before reconnection attempt `attempt` (1 for the first)."""
    if attempt <= 1:
        return 0.0
    base = min(policy.max_backoff_s, policy.backoff_s * policy.multiplier ** (attempt - 2))
    return base * uniform(1.0 - policy.jitter, 1.0)


@dataclass(frozen=True)
class Ended:
    """A call that ended where a response was read: its error, None when it ended OK."""

    error: SeqServeError | None


class Next(enum.Enum):
    """What a session does after a response that is not the current call's answer."""

    READ = "read"  # read the next one
    RECONNECT = "reconnect"  # resume on a new call (Session._reconnect)


def lost_connection(error: SeqServeError | None) -> bool:
    """Whether a call ended for its connection or its replica, not for what the session sent:
    then a resumable session resumes. UNAVAILABLE (a replica stopped, drained, crashed or out of
    reach; "session moved" after a handoff), a stream that ended without a status while an
    answer was due (None), an HTTP/2 stream reset (RST_STREAM, as proxies and dying peers
    cause: INTERNAL or CANCELLED naming it), and grpc.aio's own write failure when the server's
    status never came. A session's own errors (bad input, its deadline, its idle timeout) are
    not: the same messages would fail the same way."""
    if error is None or error.code == grpc.StatusCode.UNAVAILABLE:
        return True
    if error.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED):
        return "RST_STREAM" in error.message or error.message == CORE_WRITE_FAILURE
    return False


@dataclass
class Sent:
    """A steps or reset message as sent: its index since the session's first open."""

    index: int
    request: pb.SessionRequest
    answered: bool  # the server answers it (an output, or a reset's `reset`)
    steps: int  # the steps it feeds; a reset: 0


class Replay:
    """One session's replay bookkeeping (see the module's docstring). A session that is not
    resumable (`keep` False) still counts its messages (for `checkpoint()`) but keeps none."""

    def __init__(self, checkpoint_every: int, keep: bool, reconnect: Reconnect) -> None:
        self.checkpoint_every = checkpoint_every
        self.keep = keep
        self.reconnect = reconnect
        self.next_index = 0  # the index of the next steps or reset message
        self.token: bytes | None = None  # the newest checkpoint's
        self.token_messages = 0  # ... and the messages it holds
        self.kept: deque[Sent] = deque()  # the messages from token_messages on
        self.awaiting: Sent | None = None  # the kept message whose answer the call waits for
        self.pending: pb.SessionRequest | None = None  # the call's end_input or checkpoint
        self.target = 0  # a checkpoint request: the messages its answer holds
        self.parts = 0  # decoded parts the current `end_input` delivered
        self.skip = 0  # after a replay: answers the caller already has, to drop
        self.drop_parts = 0  # after a replay: decoded parts the caller already has
        self.attempts = 0  # reconnections since the last answer delivered
        self.failure: SeqServeError | None = None  # what ended the last call
        self.completed = 0  # steps and reset messages whose calls completed
        self.last_step = -1  # since open or reset, of the steps those fed
        self.resumes = 0  # times the session was resumed on a new call
        self.steps_replayed = 0  # steps sent again after those resumptions

    def start(self, token: bytes, messages: int, steps: int) -> None:
        """The session was opened from `token` (resumed at `messages`, holding `steps`): the
        caller's next message has that index."""
        self.token, self.token_messages = token, messages
        self.next_index = self.completed = messages
        self.last_step = steps - 1

    # -- calls ----------------------------------------------------------------------------

    def sent(self, request: pb.SessionRequest, answered: bool, steps: int) -> None:
        """A steps or reset message is about to be sent."""
        entry = Sent(self.next_index, request, answered, steps)
        self.next_index += 1
        if self.keep:
            self.kept.append(entry)
        if answered:
            self.awaiting = entry
        else:
            self._complete(entry)

    def begin(self, request: pb.SessionRequest) -> None:
        """An `end_input` or checkpoint request is about to be sent."""
        self.pending, self.parts, self.target = request, 0, self.next_index

    def over_bound(self) -> bool:
        """More messages kept than a call may leave: ask for a checkpoint before returning."""
        idle = self.awaiting is None and self.pending is None
        return self.keep and idle and len(self.kept) > self.checkpoint_every

    # -- responses ------------------------------------------------------------------------

    def checkpointed(self, checkpoint: pb.SessionCheckpoint) -> None:
        """A checkpoint (or handoff) read: the newest token, and fewer messages to keep."""
        if checkpoint.messages > self.next_index:
            raise ValueError(
                f"a checkpoint holds {checkpoint.messages} messages; {self.next_index} were sent"
            )
        if self.token is not None and checkpoint.messages < self.token_messages:
            return  # older than the one held (cannot happen in order, kept for safety)
        self.token, self.token_messages = checkpoint.token, checkpoint.messages
        while self.kept and self.kept[0].index < checkpoint.messages:
            self.kept.popleft()

    def answers_checkpoint(self, checkpoint: pb.SessionCheckpoint) -> bool:
        """Whether this checkpoint answers the call's checkpoint request (it holds every
        message sent before the request)."""
        asked = self.pending is not None and self.pending.WhichOneof("kind") == "checkpoint"
        if asked and checkpoint.messages >= self.target:
            self.pending = None
            self.attempts = 0
            return True
        return False

    def delivers(self, response: pb.SessionResponse) -> bool:
        """Whether an answer (an output, a reset's `reset`) goes to the caller: not those it
        already has, read again after a replay."""
        if self.skip:
            self.skip -= 1
            return False
        decoding = self.pending is not None and self.pending.WhichOneof("kind") == "end_input"
        if self.awaiting is not None:
            self._complete(self.awaiting)
            self.awaiting = None
        elif decoding and response.WhichOneof("kind") == "output":
            if self.drop_parts:
                self.drop_parts -= 1
                return False
            self.parts += 1
            if response.output.last:
                self.pending = None
        self.attempts = 0
        return True

    def _complete(self, entry: Sent) -> None:
        self.completed = entry.index + 1
        reset = entry.request.WhichOneof("kind") == "reset"
        self.last_step = -1 if reset else self.last_step + entry.steps

    # -- resuming -------------------------------------------------------------------------

    def next_delay(self) -> float:
        """Seconds to wait before the next reconnection; SessionLost once none is left."""
        self.attempts += 1
        if self.attempts > self.reconnect.attempts:
            raise self.lost(f"gave up after {self.reconnect.attempts} reconnection attempts")
        return backoff(self.reconnect, self.attempts)

    def replay_from(self, start: int) -> list[pb.SessionRequest]:
        """The replica resumed at message `start`: what to send again (the kept messages from
        it on, then the call's end_input or checkpoint request); which answers to drop."""
        first = self.kept[0].index if self.kept else self.next_index
        if not first <= start <= self.next_index:
            raise self.lost(
                f"the replica resumed at message {start}; the SDK holds messages {first} to "
                f"{self.next_index - 1}"
            )
        if self.awaiting is not None and start > self.awaiting.index:
            raise self.lost(
                f"the replica's state holds message {self.awaiting.index}, whose answer never came"
            )
        while self.kept and self.kept[0].index < start:
            self.kept.popleft()
        replayed = list(self.kept)
        self.resumes += 1
        self.steps_replayed += sum(e.steps for e in replayed)
        self.skip = sum(e.answered for e in replayed) - (self.awaiting is not None)
        decoding = self.pending is not None and self.pending.WhichOneof("kind") == "end_input"
        self.drop_parts = self.parts if decoding else 0  # (a finished decode's count: none)
        requests = [e.request for e in replayed]
        return requests if self.pending is None else [*requests, self.pending]

    def lost(self, why: str, cause: SeqServeError | None = None) -> SessionLost:
        """The error that ends a session that cannot be continued."""
        cause = cause or self.failure or SeqServeError(grpc.StatusCode.UNKNOWN, "no status")
        return SessionLost(
            cause,
            why,
            self.completed,
            self.last_step,
            self.token,
            self.token_messages,
            self.attempts,
        )


def step_count(steps: pb.SessionSteps) -> int:
    """The steps a steps message feeds: its tensor's first axis (every input's, by name)."""
    tensors = [steps.values] if steps.HasField("values") else list(steps.named_values.values())
    return int(tensors[0].shape[0]) if tensors and tensors[0].shape else 0
