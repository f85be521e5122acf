"""The synchronous client: `with SeqServeClient("127.0.0.1:8500") as c: c.predict(...)`.

Only I/O lives here: what each call sends and what its reply means is in calls.py, shared with
the asyncio client (aio.py), whose methods mirror these one for one.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import TypeVar

import grpc

from . import calls
from .calls import Call, Inputs, StaticInputs, TopK
from .errors import from_rpc_error
from .results import ModelMetadata, ModelStatus, Predicted, Prediction, StreamPart
from .resumption import DEFAULT_CHECKPOINT_EVERY, Reconnect
from .session import Session
from .twins import ClientBase

R = TypeVar("R")


class SeqServeClient(ClientBase):
    """A connection to one seqserve server (or load balancer), see `ClientBase`. Thread-safe;
    reuse it."""

    _grpc = grpc

    def __enter__(self) -> SeqServeClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channels; calls still in flight are cancelled."""
        for channel in self._pool.channels:
            channel.close()

    # -- predictions ---------------------------------------------------------------------

    def predict(
        self, model: str, inputs: Inputs, *, version: int = 0, timeout: float | None = None
    ) -> Predicted:
        """Outputs as numpy: one array [batch, ...], or a list when output lengths differ; a
        dict of them by output name for a model with several outputs. Text models take a list
        of str (one text per item) or lists of token strings; text outputs come back as object
        arrays of str."""
        return self._unary(calls.predict(model, inputs, version), timeout)

    def classify(
        self,
        model: str,
        inputs: Inputs,
        *,
        top_k: int = 3,
        version: int = 0,
        timeout: float | None = None,
    ) -> TopK:
        """The k best (label, score) pairs per output vector, for models with labels; for a
        model with several outputs, a dict of them by labelled output name."""
        return self._unary(calls.classify(model, inputs, top_k, version), timeout)

    def predict_full(
        self,
        model: str,
        inputs: Inputs,
        *,
        version: int = 0,
        top_k: int = 0,
        timeout: float | None = None,
    ) -> Prediction:
        """Outputs with the model, version and mode that computed them, and top_k pairs."""
        return self._unary(calls.predict_full(model, inputs, version, top_k), timeout)

    def predict_stream(
        self,
        model: str,
        inputs: Inputs,
        *,
        version: int = 0,
        top_k: int = 0,
        timeout: float | None = None,
    ) -> Iterator[StreamPart]:
        """Output parts as the server produces them: sequence outputs step by step."""
        call = calls.predict_stream(model, inputs, version, top_k)
        stream = self._rpcs[call.rpc](call.request, timeout=self._deadline(timeout))
        try:
            for part in stream:
                yield call.read(part)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            stream.cancel()

    def session(
        self,
        model: str,
        *,
        version: int = 0,
        emit_on_request: bool = False,
        top_k: int = 0,
        static_inputs: StaticInputs | None = None,
        timeout: float | None = None,
        resumable: bool = False,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
        resume: bytes | None = None,
        reconnect: Reconnect | None = None,
    ) -> Session:
        """Open a stateful streaming session (`Session.open`: here, before it returns).
        `static_inputs`: a model's inputs without a time axis by name, one item each (a vector
        [features...] or token ids [n]), given once here. Its deadline is `timeout`, none by
        default: sessions live long.

        Resumable (`resumable=True`, README "Resumable sessions"): the server checkpoints the
        session every `checkpoint_every` steps; on a handoff (a replica stopping) or a lost
        connection the session resumes from its newest checkpoint on whichever replica the
        target reaches, sends again the messages the checkpoint lacks and delivers every output
        once, in order: the caller sees nothing. It keeps the messages since its newest
        checkpoint to do so: at most `checkpoint_every` between calls (it asks for a checkpoint
        itself when unanswered messages pile up past that). A server without a session key
        raises ResumptionUnavailable at open; a session that cannot be continued (token
        refused, `reconnect`'s attempts spent) raises SessionLost. `resume`: open from a token
        of `checkpoint()` or of a SessionMoved (the same `emit_on_request` as the session it
        came from) and send again the messages from `info.resumed_at_message` on."""
        protocol = calls.SessionProtocol(
            model,
            version,
            emit_on_request,
            top_k,
            static_inputs,
            resumable=resumable,
            checkpoint_every=checkpoint_every,
            resume=resume,
            reconnect=reconnect,
        )
        return Session(self._rpcs["Session"], protocol, timeout).open()

    # -- repository ----------------------------------------------------------------------

    def list_models(self, *, timeout: float | None = None) -> list[ModelStatus]:
        """Every version of every model with its state, including those that failed to load."""
        return self._unary(calls.list_models(), timeout)

    def load_model(self, model: str, *, timeout: float | None = None) -> list[ModelStatus]:
        """Load (or reload) the model's new and changed versions from the server's repository;
        every version's status after it (needs the `admin` scope where tokens are on)."""
        return self._unary(calls.load_model(model), timeout)

    def unload_model(self, model: str, *, timeout: float | None = None) -> list[ModelStatus]:
        """Unload every version of the model: in-flight work finishes, open sessions end."""
        return self._unary(calls.unload_model(model), timeout)

    def metadata(
        self, model: str, *, version: int = 0, timeout: float | None = None
    ) -> ModelMetadata:
        return self._unary(calls.metadata(model, version), timeout)

    def health(self, service: str = "", *, timeout: float | None = None) -> bool:
        """True when the server (or the named model, or service) is serving."""
        return self._unary(calls.health(service), timeout)

    # -- I/O -----------------------------------------------------------------------------

    def _unary(self, call: Call[R], timeout: float | None) -> R:
        try:
            response = self._rpcs[call.rpc](call.request, timeout=self._deadline(timeout))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return call.read(response)
