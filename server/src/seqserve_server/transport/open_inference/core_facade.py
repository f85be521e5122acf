"""Every call the Open Inference adapter makes into the core, and the core types it sees.

The rest of this package imports the core only through this module: when the core's names change,
this is the one file to adapt. What it hands out are this package's own small views.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ...core.batch import Batch
from ...core.classification import Labels, Ranked, TopK
from ...core.errors import (
    BadResumeToken,
    InvalidInput,
    LimitExceeded,
    ModelNotFound,
    NotOpen,
    ResumeTokenRefused,
    SeqServeError,
    SessionMoved,
    Unsupported,
)
from ...core.inference import InferenceService
from ...core.limits import RequestLimits
from ...core.management import ModelManager
from ...core.modes import Mode
from ...core.repository import ModelState, ReadyModel
from ...core.session_store import SharedSessions, StoreUnavailable, sequence_key
from ...core.sessions import OpenSession, SessionManager

__all__ = [
    "Batch",
    "Core",
    "InvalidInput",
    "LimitExceeded",
    "Mode",
    "ModelNotFound",
    "ModelView",
    "NotOpen",
    "Outputs",
    "Part",
    "Ranked",
    "RequestLimits",
    "SeqServeError",
    "SequenceHandle",
    "SessionMoved",
    "StepOutput",
    "StoreUnavailable",
    "TensorView",
    "TopK",
    "Unsupported",
    "VersionState",
]


@dataclass(frozen=True)
class TensorView:
    """An input or output: shape without the batch axis, None for an axis of any size."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]
    sequence: bool = False  # an input of steps: it may come ragged, with `<name>_lengths`


@dataclass(frozen=True)
class ModelView:
    """A ready model version as the adapter needs to describe and validate it."""

    name: str
    version: int
    mode: Mode
    inputs: tuple[TensorView, ...]  # in the model's order
    outputs: tuple[TensorView, ...]
    labels: Labels  # by output name: the classification outputs
    limits: RequestLimits
    max_batch_size: int
    max_queue_delay_ms: float
    session_support: str  # "incremental", "recompute" or "unsupported"
    session_idle_timeout_s: float
    max_sessions: int
    compute_path: str
    description: str

    @property
    def input(self) -> TensorView:
        """The first input: the only one of a model that sessions step."""
        return self.inputs[0]


@dataclass(frozen=True)
class VersionState:
    """One version in the repository, whatever its state."""

    name: str
    version: int
    state: str  # "loading", "ready" or "failed"
    reason: str


@dataclass(frozen=True)
class Outputs:
    """A prediction: every output by name ([batch, ...] or ragged sequences) and top-k."""

    version: int
    named: dict[str, Batch]
    top_k: Ranked | None


@dataclass(frozen=True)
class Part:
    """Streamed outputs of the inputs `indices`, whole or from `first_step` on (of `lengths`)."""

    indices: list[int]
    outputs: list[dict[str, np.ndarray]]
    top_k: list[Ranked] | None
    first_step: int
    lengths: list[int] | None


@dataclass(frozen=True)
class StepOutput:
    """What a session gives for new steps, by output name: [steps, ...] or a running vector;
    and top-k."""

    named: dict[str, np.ndarray]
    top_k: Ranked


@dataclass
class SequenceHandle:
    """An open session of the core, as the adapter holds it."""

    session: OpenSession
    model: ModelView
    k: int  # top-k labels of every output


class Core:
    def __init__(
        self,
        inference: InferenceService,
        sessions: SessionManager,
        manager: ModelManager | None = None,
        shared: SharedSessions | None = None,
    ) -> None:
        self._inference = inference
        self._sessions = sessions
        self._manager = manager
        self._shared = shared

    # -- repository ----------------------------------------------------------------------

    def has(self, name: str, version: int = 0) -> bool:
        return self._inference.repository.has(name, version)

    def versions(self, name: str | None = None) -> list[VersionState]:
        """Every version of one model (ModelNotFound if unknown) or of all, by name then number."""
        repository = self._inference.repository
        entries = [repository.entry(name)] if name is not None else repository.entries()
        states = []
        for entry in sorted(entries, key=lambda e: e.name):
            if not entry.versions:
                states.append(VersionState(entry.name, 0, "failed", entry.error))
            for number in sorted(entry.versions):
                version = entry.versions[number]
                states.append(VersionState(entry.name, number, version.state.value, version.error))
        return states

    def model(self, name: str, version: int = 0) -> ModelView:
        """The ready version asked for (0: the newest ready one)."""
        return self._view(self._inference.repository.resolve(name, version))

    def ready(self, name: str, version: int = 0) -> bool:
        repository = self._inference.repository
        if not repository.has(name, version):
            return False
        entry = repository.entry(name)
        if version == 0:
            return entry.newest_ready is not None
        return entry.versions[version].state is ModelState.READY

    def _view(self, target: ReadyModel) -> ModelView:
        runtime = target.runtime
        sig, mode, config = runtime.signature, runtime.mode, target.config
        outputs = tuple(TensorView(o.name, o.dtype, o.shape) for o in sig.outputs)
        status = self._inference.repository.status(target.name, target.version)
        support, _ = self._sessions.support(status)
        return ModelView(
            name=target.name,
            version=target.version,
            mode=mode,
            inputs=tuple(TensorView(s.name, s.dtype, s.shape, s.sequence) for s in sig.inputs),
            outputs=outputs,
            labels=target.labels,
            limits=target.limits,
            max_batch_size=config.max_batch_size,
            max_queue_delay_ms=config.max_queue_delay_ms,
            session_support=support.value,
            session_idle_timeout_s=config.session_idle_timeout_s,
            max_sessions=config.max_sessions,
            compute_path=runtime.compute_path,
            description=config.description,
        )

    # -- inference -----------------------------------------------------------------------

    async def predict(
        self, model: ModelView, inputs: dict[str, Batch], k: int, deadline: float | None
    ) -> Outputs:
        """`inputs`: every input's batch by name."""
        target = self._inference.repository.resolve(model.name, model.version)
        with _v2_fields():
            prediction = await self._inference.predict(target, inputs, k, deadline)
        named = prediction.named or {model.outputs[0].name: prediction.outputs}
        return Outputs(prediction.version, named, prediction.top_k)

    async def predict_parts(
        self, model: ModelView, inputs: dict[str, Batch], k: int, deadline: float | None
    ) -> AsyncIterator[Part]:
        """Outputs a few inputs (or, stepped, a window of steps) at a time, as computed."""
        target = self._inference.repository.resolve(model.name, model.version)
        split = target.runtime.signature.split
        parts = self._inference.predict_stream(target, inputs, k, deadline)
        with _v2_fields():  # the core validates at the first part
            async for part in parts:
                outputs = [split(o) for o in part.outputs]
                yield Part(part.indices, outputs, part.top_k, part.first_step, part.lengths)

    # -- sessions ------------------------------------------------------------------------

    def open_sequence(
        self, name: str, version: int, k: int, statics: dict[str, np.ndarray]
    ) -> SequenceHandle:
        """A session that emits after every request (Triton's sequences answer every request);
        `statics`: the model's static inputs, one item each."""
        with _v2_fields():
            session = self._sessions.open(name, version, k, statics)
        return SequenceHandle(session, self._view(session.target), k)

    async def step(self, handle: SequenceHandle, steps: dict[str, np.ndarray]) -> StepOutput | None:
        """`steps`: each sequence input's new steps by name."""
        session = handle.session
        values = next(iter(steps.values())) if len(steps) == 1 else steps
        with _v2_fields():
            output = await self._sessions.step(session, values)
        if output is None:
            return None
        return StepOutput(session.target.runtime.signature.split(output.values), output.top_k)

    async def finish(self, handle: SequenceHandle) -> StepOutput:
        session = handle.session
        output = await self._sessions.finish(session)
        return StepOutput(session.target.runtime.signature.split(output.values), output.top_k)

    def close(self, handle: SequenceHandle) -> None:
        self._sessions.close(handle.session)

    def replayed(self, handle: SequenceHandle, request: str) -> bytes | None:
        """The answer the sequence gave this request before (a retry), or None (new)."""
        return self._sessions.replayed(handle.session, request)

    def remember(self, handle: SequenceHandle, request: str, reply: bytes) -> None:
        """The request just applied and its answer: stored with the sequence's state."""
        self._sessions.remember(handle.session, request, reply)

    def last_request(self, handle: SequenceHandle) -> str:
        """The name `remember` last gave the sequence's request ("": none kept)."""
        return handle.session.request

    # -- sequences in the shared session store (core/session_store.py) ----------------------

    @property
    def stores_sequences(self) -> bool:
        """A shared session store is set: sequences move between replicas through it."""
        return self._shared is not None

    @property
    def stores_every_step(self) -> bool:
        """Sequences are written after each request (`--session-store-write every-step`)."""
        return self._shared is not None and self._shared.every_step

    async def store_sequence(
        self,
        name: str,
        sequence: int | str,
        handle: SequenceHandle,
        caller: str,
        replacing: bytes | None = None,
        ttl_s: float | None = None,
    ) -> bytes | None:
        """Seal the sequence's session into the store (kept at most `ttl_s`): the token written,
        None when `replacing` was given and another replica has written since (stale copy)."""
        shared = self._store()
        key = sequence_key(name, sequence)
        return await shared.put(key, handle.session, caller, replacing, ttl_s)

    async def take_sequence(
        self, name: str, sequence: int | str, caller: str
    ) -> tuple[SequenceHandle, bytes] | None:
        """The sequence from the store, resumed here (None: not there) and its token. Written
        on drain only, the token is removed once taken; written every step, it stays (the next
        write replaces it only where it is still this one). A stored state that does not apply
        here is refused with the resume refusal's code and reason."""
        shared = self._store()
        key = sequence_key(name, sequence)
        try:
            taken = await shared.take(key, name, caller, keep=shared.every_step)
        except (ResumeTokenRefused, BadResumeToken) as exc:
            exc.field = "parameters['sequence_id']"
            exc.message = f"sequence {sequence!r} in the shared session store: {exc.message}"
            exc.args = (exc.message,)
            raise
        if taken is None:
            return None
        session, token = taken
        return SequenceHandle(session, self._view(session.target), session.k), token

    async def unstore_sequence(
        self, name: str, sequence: int | str, holding: bytes | None = None
    ) -> bool:
        """Remove the sequence's stored state (with `holding`: only where it is that token)."""
        return await self._store().delete(sequence_key(name, sequence), holding)

    def _store(self) -> SharedSessions:
        if self._shared is None:
            raise Unsupported("this server was started without --session-store")
        return self._shared

    # -- model management (RepositoryModelLoad / RepositoryModelUnload) -----------------------

    async def load_model(self, name: str) -> None:
        """(Re)load the model's new and changed versions from the repository directory."""
        await self._management().load(name)

    async def unload_model(self, name: str) -> None:
        """Unload every version of the model; in-flight work finishes, sessions end."""
        await self._management().unload(name)

    def _management(self) -> ModelManager:
        if self._manager is None:
            raise Unsupported("this server was started without model management")
        return self._manager


# The core names a request's fields as seqserve.v1 does (`named_inputs["x"].lengths[0]`); v2
# callers sent the tensors `x` and `x_lengths`.
_FIELD = re.compile(
    r'(?:open\.|steps\.)?named_(?:inputs|values)\["([^"]*)"\](\.values(\.shape|\.dtype)?|\.shape|\.lengths)?'
)


def _v2_field(match: re.Match[str]) -> str:
    name, part, detail = match.group(1), match.group(2) or "", match.group(3) or ""
    if part == ".lengths":
        return name + "_lengths"
    if part == ".shape":
        return name + ".shape"
    return name + {".shape": ".shape", ".dtype": ".datatype"}.get(detail, "")


@contextmanager
def _v2_fields() -> Iterator[None]:
    """InvalidInput raised inside, its field in v2's names."""
    try:
        yield
    except InvalidInput as exc:
        field, expected = _FIELD.sub(_v2_field, exc.field), _FIELD.sub(_v2_field, exc.expected)
        if (field, expected) == (exc.field, exc.expected):
            raise
        raise InvalidInput(field, expected, exc.got) from exc
