"""Python client SDK for seqserve: numpy in, numpy out, over gRPC. No TensorFlow needed.

Every I/O class has an asyncio twin with the same methods and parameters, awaited:
SeqServeClient / AsyncSeqServeClient, Session / AsyncSession.
"""

from .aio import AsyncSeqServeClient, AsyncSession
from .client import SeqServeClient
from .errors import (
    CancelledError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidInputError,
    ModelNotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    ResumptionUnavailable,
    SeqServeError,
    SessionLost,
    SessionMoved,
    StreamLimitError,
    UnauthenticatedError,
    UnavailableError,
)
from .results import (
    ModelMetadata,
    ModelStatus,
    Prediction,
    SessionInfo,
    SessionOutput,
    StreamPart,
    TensorSpec,
)
from .resumption import Reconnect
from .session import Session

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
    "PermissionDeniedError",
    "Prediction",
    "Reconnect",
    "ResourceExhaustedError",
    "ResumptionUnavailable",
    "SeqServeClient",
    "SeqServeError",
    "Session",
    "SessionInfo",
    "SessionLost",
    "SessionMoved",
    "SessionOutput",
    "StreamLimitError",
    "StreamPart",
    "TensorSpec",
    "UnauthenticatedError",
    "UnavailableError",
]
