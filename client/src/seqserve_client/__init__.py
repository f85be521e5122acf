"""Python client SDK for seqserve: numpy in, numpy out, over gRPC. No TensorFlow needed."""

from .client import SeqServeClient
from .errors import (
    CancelledError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidInputError,
    ModelNotFoundError,
    ResourceExhaustedError,
    SeqServeError,
    UnavailableError,
)
from .results import ModelMetadata, ModelStatus, Prediction, StreamPart, TensorSpec

__all__ = [
    "CancelledError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InvalidInputError",
    "ModelMetadata",
    "ModelNotFoundError",
    "ModelStatus",
    "Prediction",
    "ResourceExhaustedError",
    "SeqServeClient",
    "SeqServeError",
    "StreamPart",
    "TensorSpec",
    "UnavailableError",
]
