"""Python client SDK for seqserve: numpy in, numpy out, over gRPC. No TensorFlow needed."""

from .aio import AsyncSeqServeClient, AsyncSession
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
from .session import Session, SessionInfo, SessionOutput

__all__ = [
    "AsyncSeqServeClient",
    "AsyncSession",
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
    "Session",
    "SessionInfo",
    "SessionOutput",
    "StreamPart",
    "TensorSpec",
    "UnavailableError",
]
