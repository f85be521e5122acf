"""The synchronous client: `with SeqServeClient("127.0.0.1:8500") as c: c.predict(...)`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc
from seqserve_api.tensors import Inputs, from_tensor, request_inputs, split_sequences

from .channel import channel_options
from .errors import from_rpc_error
from .results import (
    ModelMetadata,
    ModelStatus,
    Outputs,
    Predicted,
    Prediction,
    StreamPart,
    metadata_from_proto,
    mode_name,
    status_from_proto,
    stream_part_from,
    top_k_pairs,
)
from .session import Session, open_request

DEFAULT_TIMEOUT_S = 30.0


class SeqServeClient:
    """A connection to one seqserve server (or load balancer). Thread-safe; reuse it."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, object]] = (),
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._channel = (
            grpc.secure_channel(target, credentials, options=channel_options(options))
            if credentials
            else grpc.insecure_channel(target, options=channel_options(options))
        )
        self._stub = pb_grpc.SeqServeStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> SeqServeClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # -- predictions ---------------------------------------------------------------------

    def predict(
        self, model: str, inputs: Inputs, *, version: int = 0, timeout: float | None = None
    ) -> Predicted:
        """Outputs as numpy: one array [batch, ...], or a list when output lengths differ; a
        dict of them by output name for a model with several outputs."""
        return self.predict_full(model, inputs, version=version, timeout=timeout).outputs

    def classify(
        self,
        model: str,
        inputs: Inputs,
        *,
        top_k: int = 3,
        version: int = 0,
        timeout: float | None = None,
    ) -> list[list[tuple[str, float]]]:
        """The k best (label, score) pairs per output vector, for models with labels."""
        return self.predict_full(model, inputs, version=version, top_k=top_k, timeout=timeout).top_k

    def predict_full(
        self,
        model: str,
        inputs: Inputs,
        *,
        version: int = 0,
        top_k: int = 0,
        timeout: float | None = None,
    ) -> Prediction:
        request = predict_request(model, inputs, version, top_k)
        response = self._call(self._stub.Predict, request, timeout)
        return prediction_from(response)

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
        request = predict_request(model, inputs, version, top_k)
        stream = self._stub.PredictStream(request, timeout=self._timeout(timeout))
        try:
            for part in stream:
                yield stream_part_from(part)
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
        timeout: float | None = None,
    ) -> Session:
        """Open a stateful streaming session (no default deadline: sessions live long)."""
        return Session(self._stub, open_request(model, version, emit_on_request, top_k), timeout)

    # -- repository ----------------------------------------------------------------------

    def list_models(self, *, timeout: float | None = None) -> list[ModelStatus]:
        response = self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [status_from_proto(m) for m in response.models]

    def metadata(
        self, model: str, *, version: int = 0, timeout: float | None = None
    ) -> ModelMetadata:
        request = pb.GetModelMetadataRequest(model_name=model, model_version=version)
        return metadata_from_proto(self._call(self._stub.GetModelMetadata, request, timeout))

    def health(self, service: str = "", *, timeout: float | None = None) -> bool:
        """True when the server (or the named model, or service) is serving."""
        request = health_pb2.HealthCheckRequest(service=service)
        response = self._call(self._health.Check, request, timeout)
        return response.status == health_pb2.HealthCheckResponse.SERVING

    # -- plumbing ------------------------------------------------------------------------

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=self._timeout(timeout))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None


def _output_from(message: pb.PredictResponse | pb.Output) -> Outputs:
    if message.WhichOneof("output") == "vectors":
        return from_tensor(message.vectors.values)
    values = from_tensor(message.sequences.values)
    lengths = list(message.sequences.lengths)
    if lengths and all(n == lengths[0] for n in lengths):
        return values.reshape(len(lengths), lengths[0], *values.shape[1:])
    return split_sequences(values, lengths)


def predict_request(model: str, inputs: Inputs, version: int, top_k: int) -> pb.PredictRequest:
    return pb.PredictRequest(
        model_name=model, model_version=version, top_k=top_k, **request_inputs(inputs)
    )


def prediction_from(response: pb.PredictResponse) -> Prediction:
    """Outputs as numpy; a dict of them by name for a model with several outputs."""
    ranked = [top_k_pairs(t) for t in response.top_k]
    outputs: Predicted
    if response.named_outputs:
        outputs = {name: _output_from(o) for name, o in sorted(response.named_outputs.items())}
    else:
        outputs = _output_from(response)
    return Prediction(
        response.model_name, response.model_version, mode_name(response.mode), outputs, ranked
    )
