"""Stateful streaming sessions: each keeps its model's recurrent state and feeds only new steps.

Steps of concurrent sessions on the same model run as one batched computation (like Triton's
sequence batcher with its "oldest" strategy): whatever arrives while a step computation runs is
stacked along the batch axis and computed next, so a lone session never waits. A light (numpy)
program computes short chunks on the event loop itself, one loop iteration after the first of
them was queued (what arrived together is one batch): cheaper than a thread hand-off; and at
once, without queueing, for the model's only open session (no other step could join it).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from .classification import Ranked, check_top_k, rank
from .compute_threads import ModelThreads
from .errors import (
    AlreadyApplied,
    InvalidInput,
    LimitExceeded,
    ModelNotFound,
    ModelNotReady,
    ResumeTokenRefused,
    Unsupported,
)
from .inputs import ACCEPTED_IDS, InputSpec, check_values
from .modes import Mode
from .observer import ModelObserver
from .proof import CHUNKS, Probe, ProofFailed, Reference, prove_program
from .repository import ModelRepository, ReadyModel, VersionStatus
from .resumption import Checkpoint, Resumption
from .runtime import ModelRuntime
from .session_tokens import SessionSnapshot, check_binding, state_layout
from .stepping.analysis import Unsteppable
from .stepping.numpy_program import numpy_program
from .stepping.programs import Chunk, SessionSupport, StepProgram, build_step_program, steps_in
from .stepping.state import State, static_key

log = logging.getLogger(__name__)

Values = dict[str, np.ndarray]  # arrays by input name
STATIC_PREFIX = static_key("")
RESUMPTION_OFF = (
    "sessions are not resumable on this server: it was started without --session-key-file"
)
MAX_STEP_BATCH = 256  # sessions stacked into one step computation
STREAM_WINDOW = 32  # steps per part when PredictStream steps a long sequence
INLINE_MAX_STEPS = 16  # a light (numpy) program computes groups this small on the event loop


@dataclass
class StepOutput:
    """Outputs computed for a session: `values` [steps, ...] or a running vector [...]; several
    outputs packed along the feature axis (the model's `Signature.split` names them)."""

    step: int
    values: np.ndarray
    top_k: Ranked = field(default_factory=dict)  # by labelled output, a ranking per row
    last: bool = False


@dataclass(frozen=True)
class StepRules:
    """What every steps message of a session is checked against, worked out once at open (the
    version's config and signature do not change under an open session)."""

    mode: Mode
    sequences: tuple[InputSpec, ...]  # fed together, a few steps per message
    statics: tuple[InputSpec, ...]  # given at open (and reset)
    per_message: int  # steps one message may carry (max_sequence_length)
    in_all: int  # steps since open or reset (0: unbounded)

    @classmethod
    def of(cls, target: ReadyModel, program: StepProgram) -> StepRules:
        """A message carries at most one sequence's limit of steps. An incremental session
        costs the same per step at any length and may run on (bounded by the config's own
        limit only); a recomputing one gets the model's limit in all."""
        signature = target.runtime.signature
        per_message = target.limits.max_sequence_length
        in_all = signature.fixed_steps or target.config.max_sequence_length
        if program.support is SessionSupport.RECOMPUTE:
            in_all = in_all or per_message
        return cls(
            target.mode, signature.sequence_inputs, signature.static_inputs, per_message, in_all
        )


MAX_KEPT_REPLY_BYTES = 1 << 20  # a larger answer is not kept: its retry is refused, not reapplied


@dataclass
class OpenSession:
    """One caller's session on a model: its recurrent state and the steps fed since open/reset."""

    id: str
    target: ReadyModel
    program: StepProgram
    k: int
    state: State
    rules: StepRules
    queue: _StepQueue  # the model version's, where its steps are computed
    observer: ModelObserver
    statics: dict[str, np.ndarray] = field(default_factory=dict)  # checked, each [1, ...]
    emit_on_request: bool = False  # a wire setting, kept to travel in checkpoints
    layout: str = ""  # its step program's state layout (what a checkpoint is bound to)
    steps: int = 0
    messages: int = 0  # steps and reset messages processed since first opened (across resumes)
    finished: bool = False
    # The last request applied, as its transport names it, and the answer it was given (bytes
    # the transport made): they travel in checkpoints, so a request retried after its answer
    # was lost, here or on another replica, is answered again instead of applied twice.
    request: str = ""
    reply: bytes = b""
    ended: str = ""  # why the server ended it (its version was unloaded or replaced)
    moving: str = ""  # why the server hands it off to another replica (resumable sessions)
    # Set by the transport: wakes the call to hand the session off (`SessionManager.hand_off`).
    interrupt: Callable[[], None] | None = None

    @property
    def mode(self) -> Mode:
        return self.rules.mode

    @property
    def support(self) -> SessionSupport:
        return SessionSupport(self.program.support)

    @property
    def idle_timeout_s(self) -> float:
        return self.target.config.session_idle_timeout_s


class SessionManager:
    def __init__(
        self,
        repository: ModelRepository,
        threads: ModelThreads,
        observers: Callable[[str], ModelObserver],
        resumption: Resumption | None = None,
        admit_open: Callable[[], None] = lambda: None,
    ) -> None:
        self.repository = repository
        self.resumption = resumption
        self.admit_open = admit_open  # raises (LoadShed) when no new session should start now
        self._layouts: dict[tuple[str, int], str] = {}
        self._threads = threads
        self._observer_for = observers
        self._programs: dict[tuple[str, int], StepProgram] = {}
        self._unsupported: dict[tuple[str, int], str] = {}
        self._queues: dict[tuple[str, int], _StepQueue] = {}
        self._open: dict[str, dict[str, OpenSession]] = {}

    # -- programs ------------------------------------------------------------------------

    def prepare_all(self) -> None:
        """Build (compile, warm up) the step program of every ready sequence model."""
        for ready in self.repository.ready_models():
            self.prepare(ready)

    def prepare(self, version: ReadyModel) -> None:
        """Build, prove and install one version's step program (or why it has none)."""
        self.install(version, self.build(version))

    def build(self, version: ReadyModel) -> StepProgram | str:
        """The version's proven step program, or why it has none. Slow: off the event loop."""
        try:
            return proven_program(version.runtime)
        except Unsupported as exc:
            return exc.message
        except Exception as exc:
            log.exception("no sessions for %s version %d", version.name, version.version)
            return f"step program failed to build: {exc}"

    def install(self, version: ReadyModel, built: StepProgram | str) -> None:
        """Sessions on `version` run `built` from now on (what `build` gave)."""
        key = (version.name, version.version)
        if isinstance(built, str):
            self._unsupported[key] = built
            return
        program = built
        self._unsupported.pop(key, None)
        self._programs[key] = program
        self._layouts[key] = state_layout(program.initial_state(1), program.support)
        support = program.support.value
        self._observer_for(version.name).compute_path(version.version, "session", support)
        executor = self._threads.executor(version.name, version.version)
        self._queues[key] = _StepQueue(program, executor, self._observer_for(version.name))
        log.info(
            "sessions on %s version %d: %s (%s)",
            version.name, version.version, support, program.reason,
        )  # fmt: skip

    def drop(self, model: str, version: int, why: str) -> int:
        """End the version's open sessions (their next call fails saying `why`) and forget its
        program and step queue; how many sessions ended."""
        key = (model, version)
        self._programs.pop(key, None)
        self._queues.pop(key, None)
        self._layouts.pop(key, None)
        self._unsupported.pop(key, None)
        sessions = self._open.get(model, {})
        ended = [s for s in sessions.values() if s.target.version == version]
        for session in ended:
            session.ended = why
            sessions.pop(session.id, None)
            self._hand_off(session, why)
        if ended:
            self._observer_for(model).sessions_open(len(sessions))
        return len(ended)

    def support(self, version: VersionStatus) -> tuple[SessionSupport, str]:
        """Whether (and how) a version runs sessions, and why."""
        key = (version.name, version.version)
        if key in self._programs:
            program = self._programs[key]
            return program.support, program.reason
        return SessionSupport.UNSUPPORTED, self._unsupported.get(key, version.error or "not ready")

    def incremental_program(self, version: ReadyModel) -> StepProgram | None:
        """The model's step program where it steps exactly (not by recomputing), else None."""
        program = self._programs.get((version.name, version.version))
        if program is None or program.support is not SessionSupport.INCREMENTAL:
            return None
        return program

    def open_count(self, model: str) -> int:
        return len(self._open.get(model, {}))

    # -- session life --------------------------------------------------------------------

    @property
    def resumable(self) -> bool:
        """Sessions can be checkpointed and continued elsewhere (a session key is set)."""
        return self.resumption is not None

    def open(
        self,
        model: str,
        version: int = 0,
        k: int = 0,
        statics: Values | None = None,
        emit_on_request: bool = False,
    ) -> OpenSession:
        """A new session; `statics`: the model's static inputs by name (one item each)."""
        target = self.repository.resolve(model, version)
        self.admit_open()
        program = self._program(target)
        check_top_k(k, target.labels, "open.top_k")
        rules = StepRules.of(target, program)
        checked = _check_statics(rules, statics or {}, "open.named_inputs")
        state = program.initial_state(1, checked)
        return self._admit(target, program, k, state, checked, emit_on_request)

    def resume(self, token: bytes, model: str, caller: str = "") -> OpenSession:
        """The session a checkpoint token holds, continued here: refused (FAILED_PRECONDITION
        or INVALID_ARGUMENT, saying why) when it is not authentic, expired, another caller's,
        or for a model version, file or step program this server does not serve."""
        if self.resumption is None:
            raise Unsupported(RESUMPTION_OFF)
        snapshot = self.resumption.open(token, caller)
        try:
            target = self.repository.resolve(snapshot.model, snapshot.version)
        except (ModelNotFound, ModelNotReady) as exc:
            raise ResumeTokenRefused(
                "a model version this server serves",
                f"version {snapshot.version} of {snapshot.model!r}",
                f"resume token is for version {snapshot.version} of {snapshot.model!r}, which "
                f"this server does not serve ({exc.message})",
            ) from exc
        program = self._program(target)
        layout = self._layouts[(target.name, target.version)]
        check_binding(snapshot, model, target.version, target.digest, layout)
        statics = {
            key.removeprefix(STATIC_PREFIX): value
            for key, value in snapshot.state.items()
            if key.startswith(STATIC_PREFIX)
        }
        session = self._admit(
            target, program, snapshot.top_k, snapshot.state, statics, snapshot.emit_on_request
        )
        session.steps, session.messages = snapshot.steps, snapshot.messages
        session.finished = snapshot.finished
        session.request, session.reply = snapshot.request, snapshot.reply
        return session

    def checkpoint(self, session: OpenSession, caller: str = "") -> Checkpoint:
        """The session's state sealed for any replica sharing the key."""
        if self.resumption is None:
            raise Unsupported(RESUMPTION_OFF)
        target = session.target
        snapshot = SessionSnapshot(
            target.name, target.version, target.digest,
            session.layout, session.state, session.steps,
            session.k, session.emit_on_request, session.finished, caller, time.time(),
            session.messages, session.request, session.reply,
        )  # fmt: skip
        return self.resumption.seal(snapshot)

    def hand_off_all(self, why: str) -> int:
        """Ask every open session's call to hand it off (resumable sessions; others go on until
        the server stops): how many were asked."""
        asked = 0
        for sessions in self._open.values():
            for session in sessions.values():
                asked += self._hand_off(session, why)
        return asked

    def _hand_off(self, session: OpenSession, why: str) -> int:
        if self.resumption is None or session.interrupt is None or session.moving:
            return 0
        session.moving = why
        session.interrupt()
        return 1

    def _program(self, target: ReadyModel) -> StepProgram:
        key = (target.name, target.version)
        if key not in self._programs:
            raise Unsupported(
                f"model {target.name!r} version {target.version} does not support sessions: "
                f"{self._unsupported.get(key, 'not ready')}"
            )
        return self._programs[key]

    def _admit(
        self,
        target: ReadyModel,
        program: StepProgram,
        k: int,
        state: State,
        statics: dict[str, np.ndarray],
        emit_on_request: bool,
    ) -> OpenSession:
        """A session counted under the model's `max_sessions`."""
        sessions = self._open.setdefault(target.name, {})
        limit = target.config.max_sessions
        if len(sessions) >= limit:
            raise LimitExceeded(
                f"model {target.name!r} has {len(sessions)} open sessions, its limit is {limit}"
            )
        observer = self._observer_for(target.name)
        key = (target.name, target.version)
        session = OpenSession(
            uuid.uuid4().hex, target, program, k, state, StepRules.of(target, program),
            self._queues[key], observer, statics, emit_on_request, self._layouts[key],
        )  # fmt: skip
        sessions[session.id] = session
        observer.sessions_open(len(sessions))
        return session

    def close(self, session: OpenSession) -> None:
        """Free the session's state at once (idempotent)."""
        sessions = self._open.get(session.target.name, {})
        if sessions.pop(session.id, None) is not None:
            self._observer_for(session.target.name).sessions_open(len(sessions))

    @staticmethod
    def replayed(session: OpenSession, request: str) -> bytes | None:
        """The answer the session gave `request` when it last applied it (a retry), or None (a
        new request; "" names none). `AlreadyApplied` where its answer was too large to keep."""
        if not request or request != session.request:
            return None
        if not session.reply:
            raise AlreadyApplied(
                "this request was applied to its sequence before (a retry), and its answer was "
                f"larger than the {MAX_KEPT_REPLY_BYTES} bytes kept to answer a retry"
            )
        return session.reply

    @staticmethod
    def remember(session: OpenSession, request: str, reply: bytes) -> None:
        """The request just applied (named by its transport; "" for one that cannot be told
        from a retry) and its answer, kept until the next one: checkpoints carry them."""
        session.request = request
        session.reply = reply if request and len(reply) <= MAX_KEPT_REPLY_BYTES else b""

    def reset(self, session: OpenSession, statics: Values | None = None) -> None:
        """Forget the steps fed; new static inputs replace the session's where given."""
        _check_open(session)
        if statics:
            session.statics = _check_statics(session.rules, statics, "reset.named_inputs")
        session.state = session.program.initial_state(1, session.statics)
        session.messages += 1
        session.steps = 0
        session.finished = False

    async def step(self, session: OpenSession, values: np.ndarray | Values) -> StepOutput | None:
        """Feed new steps ([k, features] or [k] token ids; by name for several sequence inputs);
        the output the mode gives for them, if any: every step's for aligned models, the
        running one for many-to-one models (where it is defined). Whether a caller is sent it
        is the wire's rule (seqserve_api.session_protocol)."""
        _check_open(session)
        chunk, count = _validate(session, values)
        alone = len(self._open.get(session.target.name, ())) == 1
        session.state, y = await session.queue.step(session.state, chunk, alone)
        first = session.steps
        session.steps += count
        session.messages += 1
        session.observer.session_steps(count)
        mode = session.rules.mode
        if mode is Mode.MANY_TO_MANY_ALIGNED:
            return self._output(session, first, y[0])
        if mode is Mode.MANY_TO_ONE and not np.isnan(y).any():
            # (NaN: a fixed-length model is defined at its length only)
            return self._output(session, session.steps - 1, y[0])
        return None

    async def finish(self, session: OpenSession) -> StepOutput:
        """The caller's input is complete: decode the output sequence (unaligned models)."""
        _check_open(session)
        if session.mode is not Mode.MANY_TO_MANY_UNALIGNED:
            raise Unsupported("end_input applies to many-to-many models of different length")
        if session.steps == 0:
            raise InvalidInput("end_input", "at least 1 step fed before it", "0 steps")
        fixed = session.target.runtime.signature.fixed_steps
        if fixed is not None and session.steps != fixed:
            raise InvalidInput("end_input", f"exactly {fixed} steps fed", f"{session.steps} steps")
        loop = asyncio.get_running_loop()
        executor = self._threads.executor(session.target.name, session.target.version)
        y = await loop.run_in_executor(executor, session.program.finish, session.state)
        session.finished = True
        return self._output(session, 0, y[0], last=True)

    def _output(
        self, session: OpenSession, step: int, values: np.ndarray, last: bool = False
    ) -> StepOutput:
        ranked: Ranked = {}
        if session.k:
            split = session.target.runtime.signature.split(values)
            ranked = rank(split, session.target.labels, session.k)
        return StepOutput(step, values, ranked, last)


def _validate(session: OpenSession, values: np.ndarray | Values) -> tuple[Chunk, int]:
    """New steps of the session's sequence inputs, checked: the chunk the program takes
    ([1, k, ...] per sequence input) and its step count k. Every input's values get the
    runtime's check, the one Predict's inputs get; the session's own rules (equal step counts,
    length, end_input) follow."""
    rules = session.rules
    named = _by_name(rules, values)
    arrays, count, first = [], 0, ""
    for spec in rules.sequences:
        field = (
            "steps.values"
            if not isinstance(values, dict)
            else _named("steps.named_values", spec.name)
        )
        steps = _steps_of(spec, named[spec.name], field)
        if not first:
            count, first = len(steps), field
        elif len(steps) != count:
            raise InvalidInput(field, f"{count} steps, as many as {first}", f"{len(steps)} steps")
        arrays.append(steps[np.newaxis])
    if session.finished:
        raise InvalidInput("steps", "a reset after end_input", "more steps")
    _check_length(rules, session.steps, count)
    return (arrays[0] if len(arrays) == 1 else tuple(arrays)), count


def _by_name(rules: StepRules, values: np.ndarray | Values) -> Values:
    """The steps by sequence input: `values` (one sequence input) or `named_values`, with
    every sequence input and no other."""
    names = [s.name for s in rules.sequences]
    if not isinstance(values, dict):
        if len(names) > 1:
            raise InvalidInput(
                "steps.named_values", f"every sequence input by name ({', '.join(names)})",
                "unnamed `values`",
            )  # fmt: skip
        return {names[0]: values}
    statics = {s.name for s in rules.statics}
    for name in values:
        if name in statics:
            raise InvalidInput(
                _named("steps.named_values", name),
                "sequence inputs only (a static input is given at open or reset, in named_inputs)",
                "a static input",
            )
        if name not in names:
            raise InvalidInput(
                _named("steps.named_values", _shown(name)), f"only the inputs {', '.join(names)}",
                f"an input named {_shown(name)!r}",
            )  # fmt: skip
    for name in names:
        if name not in values:
            got = ", ".join(sorted(values)) or "none"
            raise InvalidInput(
                _named("steps.named_values", name),
                f"every sequence input: {', '.join(names)}", f"missing (got {got})",
            )  # fmt: skip
    return values


def _steps_of(spec: InputSpec, values: np.ndarray, field: str) -> np.ndarray:
    """One sequence input's new steps: [steps, features] floats (one step may come as
    [features]) or [steps] token ids, values checked as Predict's are."""
    if spec.tokens:
        values = values[np.newaxis] if values.ndim == 0 else values
        layout_ok = values.ndim == 1
    else:
        features = spec.features
        values = values[np.newaxis] if values.ndim == 1 else values
        layout_ok = values.ndim == 2 and values.shape[-1] == features
        if layout_ok and values.dtype.type in ACCEPTED_IDS:  # SDKs send int lists as they are
            values = values.astype(np.float32)
    if not layout_ok:
        expected = "[steps] token ids" if spec.tokens else f"[steps, {spec.features}]"
        raise InvalidInput(f"{field}.shape", expected, str(list(values.shape)))
    if len(values) == 0:
        raise InvalidInput(field, "at least one step", "0 steps")
    return check_values(spec, values, field.removesuffix(".values"), _step_position)


def _check_statics(rules: StepRules, given: Values, field: str) -> dict[str, np.ndarray]:
    """The session's static inputs: exactly the model's, each one item ([features...] or
    [n] token ids; [1, ...] also), values checked as Predict's are; each [1, ...]."""
    names = [s.name for s in rules.statics]
    sequences = {s.name for s in rules.sequences}
    for name in given:
        if name in sequences:
            raise InvalidInput(
                _named(field, name), "static inputs only (a sequence input's steps come in "
                "steps, its values or named_values)", "a sequence input",
            )  # fmt: skip
        if name not in names:
            expected = (
                f"only the inputs {', '.join(names)}"
                if names
                else "none (the model has no static input)"
            )
            raise InvalidInput(
                _named(field, _shown(name)), expected, f"an input named {_shown(name)!r}"
            )
    checked = {}
    for spec in rules.statics:
        if spec.name not in given:
            got = ", ".join(sorted(given)) or "none"
            raise InvalidInput(
                _named(field, spec.name), f"every static input: {', '.join(names)}",
                f"missing (got {got})",
            )  # fmt: skip
        checked[spec.name] = _static_of(spec, given[spec.name], _named(field, spec.name))
    return checked


def _static_of(spec: InputSpec, values: np.ndarray, field: str) -> np.ndarray:
    shape = tuple(int(d or 0) for d in spec.shape)
    if values.shape == (1, *shape):
        values = values[0]
    if values.shape != shape:
        raise InvalidInput(
            f"{field}.shape", f"{list(shape)} (one item, no batch axis)", str(list(values.shape))
        )
    if values.dtype.type in ACCEPTED_IDS and not np.issubdtype(spec.dtype, np.integer):
        values = values.astype(np.float32)  # SDKs send int lists as they are
    return check_values(spec, values, field, _item_position)[np.newaxis]


def _named(field: str, name: str) -> str:
    return f'{field}["{name}"]'


def _shown(name: str) -> str:
    """A caller's name, bounded in what errors echo."""
    return name if len(name) <= 64 else name[:64] + "..."


def _step_position(at: tuple[np.intp, ...]) -> str:
    return f"step {int(at[0])}"


def _item_position(at: tuple[np.intp, ...]) -> str:
    return "[" + ", ".join(str(int(i)) for i in at) + "]"


def _check_length(rules: StepRules, steps: int, added: int) -> None:
    """`added` steps after `steps` within the session's limits (see StepRules.of)."""
    if added > rules.per_message:
        raise InvalidInput(
            "steps.values",
            f"at most {rules.per_message} steps per message (max_sequence_length)", f"{added}",
        )  # fmt: skip
    total = steps + added
    if rules.in_all and total > rules.in_all:
        raise InvalidInput(
            "steps.values",
            f"at most {rules.in_all} steps in all since open or reset (max_sequence_length)",
            f"{total}",
        )


def _check_open(session: OpenSession) -> None:
    """A session the server ended answers every call with why (FAILED_PRECONDITION)."""
    if session.ended:
        target = session.target
        raise ModelNotReady(target.name, target.version, f"session ended: {session.ended}")


def proven_program(runtime: ModelRuntime) -> StepProgram:
    """The model's step program if it equals Keras on the probes, fed as sessions and streams
    feed it; else the recompute program (through the proven compute path) if that does."""
    model, mode, signature = runtime.model, runtime.mode, runtime.signature
    chunkings = (CHUNKS, (STREAM_WINDOW,))
    program = build_step_program(model, mode, runtime.compute, signature=signature)
    cases = runtime.probes()
    try:
        prove_program(program, cases, runtime.reference, chunkings)
        return _in_numpy(program, cases, runtime.reference, chunkings)
    except ProofFailed as exc:
        if program.support is not SessionSupport.INCREMENTAL:
            raise Unsupported(f"the recompute step program differs: {exc}") from exc
        failure = exc
    fallback = build_step_program(
        model, mode, runtime.compute, incremental=False, signature=signature
    )
    try:
        prove_program(fallback, cases, runtime.reference, chunkings)
    except ProofFailed as exc:
        raise Unsupported(f"no step program equals Keras: {failure}; {exc}") from exc
    fallback.reason = f"the incremental step program differs from Keras ({failure}); recomputing"
    log.warning("%s", fallback.reason)
    return fallback


def _in_numpy(
    program: StepProgram, cases: list[Probe], ref: Reference, chunkings: tuple
) -> StepProgram:
    """The proven `program` in numpy where it has that form and it passes the same proof
    (~20x cheaper per step at batch 1), else `program` itself."""
    if program.support is not SessionSupport.INCREMENTAL:
        return program
    try:
        fast = numpy_program(program)
        prove_program(fast, cases, ref, chunkings)
    except (Unsteppable, ProofFailed) as exc:
        log.info("step program stays traced: %s", exc)
        return program
    return fast


@dataclass
class _Pending:
    state: State
    chunk: Chunk
    future: asyncio.Future[tuple[State, np.ndarray]]
    queued: float = field(default_factory=time.perf_counter)

    @property
    def group(self) -> tuple:
        """Pending steps that can share one computation: equal chunk and state shapes."""
        chunks = self.chunk if isinstance(self.chunk, tuple) else (self.chunk,)
        return (*(c.shape for c in chunks), *(v.shape for v in self.state.values()))


class _StepQueue:
    """Batches the steps of one model's sessions: one computation in flight at a time."""

    def __init__(self, program: StepProgram, executor: Executor, observer: ModelObserver) -> None:
        self._program = program
        self._executor = executor
        self._observer = observer
        self._pending: deque[_Pending] = deque()
        self._running = False
        self._task: asyncio.Task[None] | None = None  # a reference keeps the task alive

    async def step(
        self, state: State, chunk: Chunk, alone: bool = False
    ) -> tuple[State, np.ndarray]:
        """The chunk's new state and outputs. `alone`: the caller's is the model's only open
        session, so no other step could join this one's group: a light program's small step is
        then computed at once, without the queue's future, task and two loop iterations."""
        loop = asyncio.get_running_loop()
        if alone and not self._running and self._light(steps_in(chunk)):
            return self._step_alone(loop, state, chunk)
        future: asyncio.Future[tuple[State, np.ndarray]] = loop.create_future()
        self._pending.append(_Pending(state, chunk, future))
        if not self._running:
            self._running = True
            self._task = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                group = self._take_group()
                if not group:
                    continue
                try:
                    if self._inline(group):
                        results = self._isolated(group)
                    else:
                        results = await loop.run_in_executor(self._executor, self._isolated, group)
                except Exception as exc:  # noqa: BLE001 - e.g. the executor shut down
                    results = [exc] * len(group)
                for item, result in zip(group, results, strict=True):
                    if item.future.done():
                        continue
                    if isinstance(result, Exception):
                        item.future.set_exception(result)
                    else:
                        item.future.set_result(result)
        finally:
            self._running = False

    def _inline(self, group: list[_Pending]) -> bool:
        """A light program's small group (at most INLINE_MAX_STEPS steps in all) computes on the
        event loop (tens of µs): cheaper than the hand-off to the compute thread, and too short
        to hold other callers up. This runs one loop iteration after the first step was queued,
        so the steps of sessions that arrived together are one group."""
        return self._light(len(group) * steps_in(group[0].chunk))

    def _light(self, steps: int) -> bool:
        return self._program.light and steps <= INLINE_MAX_STEPS

    def _step_alone(
        self, loop: asyncio.AbstractEventLoop, state: State, chunk: Chunk
    ) -> tuple[State, np.ndarray]:
        """A lone session's step, at once (see `step`). Its metrics are taken when the loop is
        next free, once the caller's answer is on its way."""
        start = time.perf_counter()
        try:
            new_state, y = self._program.step(state, chunk)
        except Exception:
            self._observer.queue_wait(0.0)
            raise
        loop.call_soon(self._observe_alone, time.perf_counter() - start)
        return new_state, y

    def _observe_alone(self, seconds: float) -> None:
        self._observer.queue_wait(0.0)
        self._observer.batch_executed(1, seconds)

    def _take_group(self) -> list[_Pending]:
        """The oldest pending step and every other pending step that can share its computation."""
        live = [p for p in self._pending if not p.future.done()]
        self._pending.clear()
        if not live:
            return []
        key = live[0].group
        group = [p for p in live if p.group == key][:MAX_STEP_BATCH]
        chosen = {id(p) for p in group}
        self._pending.extend(p for p in live if id(p) not in chosen)
        now = time.perf_counter()
        for item in group:
            self._observer.queue_wait(now - item.queued)
        return group

    def _isolated(self, group: list[_Pending]) -> list[tuple[State, np.ndarray] | Exception]:
        """Compute the group; when that fails, each session alone: one session's bad step
        must not fail the others'."""
        try:
            return list(self._compute(group))
        except Exception as exc:  # noqa: BLE001 - returned per session, raised by its own step
            if len(group) == 1:
                return [exc]
        results: list[tuple[State, np.ndarray] | Exception] = []
        for item in group:
            try:
                results.append(self._compute([item])[0])
            except Exception as exc:  # noqa: BLE001 - see above
                results.append(exc)
        return results

    def _compute(self, group: list[_Pending]) -> list[tuple[State, np.ndarray]]:
        start = time.perf_counter()
        program = self._program
        state = group[0].state if len(group) == 1 else program.stack([p.state for p in group])
        chunk = group[0].chunk if len(group) == 1 else _stack_chunks([p.chunk for p in group])
        new_state, y = program.step(state, chunk)
        self._observer.batch_executed(len(group), time.perf_counter() - start)
        states = [new_state] if len(group) == 1 else program.split(new_state)
        return [(s, y[i : i + 1]) for i, s in enumerate(states)]


def _stack_chunks(chunks: list[Chunk]) -> Chunk:
    """Chunks of sessions (one array, or one per sequence input) as one batch."""
    first = chunks[0]
    if not isinstance(first, tuple):
        return np.concatenate(chunks)  # type: ignore[arg-type]
    return tuple(np.concatenate(arrays) for arrays in zip(*chunks, strict=True))  # type: ignore[arg-type]
