"""The one error table: every core error becomes its gRPC code with details a client reads field
by field; anything else is INTERNAL and says nothing about the server."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from seqserve_api.tensors import TensorError, TensorTooLarge
from seqserve_server.core import errors
from seqserve_server.transport.status import ERROR_DOMAIN, status_code, to_status

CASES: list[tuple[Exception, grpc.StatusCode, str]] = [
    (
        errors.InvalidInput("inputs.values", "finite numbers", "nan"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_INPUT",
    ),
    (errors.ModelNotFound("m", 3, hint="v1"), grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND"),
    (
        errors.ModelNotReady("m", 1, "still loading", loading=True),
        grpc.StatusCode.UNAVAILABLE,
        "MODEL_NOT_READY",
    ),
    (
        errors.ModelNotReady("m", 1, "cannot load"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "MODEL_NOT_READY",
    ),
    (errors.Unsupported("no sessions"), grpc.StatusCode.FAILED_PRECONDITION, "UNSUPPORTED"),
    (
        errors.LimitExceeded("too many sessions"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "LIMIT_EXCEEDED",
    ),
    (errors.Overloaded("queue full"), grpc.StatusCode.UNAVAILABLE, "OVERLOADED"),
    (errors.SessionMoved("session moved"), grpc.StatusCode.UNAVAILABLE, "SESSION_MOVED"),
    (errors.DeadlineExpired("too late"), grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXPIRED"),
    (errors.AlreadyApplied("applied"), grpc.StatusCode.ALREADY_EXISTS, "ALREADY_APPLIED"),
    (
        errors.LoadShed("would answer in 400 ms, deadline in 250 ms", 0.4, 0.25, 0.15),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "LOAD_SHED",
    ),
    (
        TensorTooLarge("inputs.values", "at most 8 values", "9"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "LIMIT_EXCEEDED",
    ),
    (
        TensorError("inputs.values", "a known DataType", "99"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_INPUT",
    ),
]


def _details(status: grpc.Status) -> tuple[status_pb2.Status, dict[str, object]]:
    """The google.rpc.Status in the trailing metadata, and its details by type name."""
    (key, value), *_ = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    proto = status_pb2.Status.FromString(value)
    kinds = {
        "ErrorInfo": error_details_pb2.ErrorInfo,
        "BadRequest": error_details_pb2.BadRequest,
        "ResourceInfo": error_details_pb2.ResourceInfo,
    }
    details: dict[str, object] = {}
    for packed in proto.details:
        name = packed.TypeName().rsplit(".", 1)[-1]
        message = kinds[name]()
        assert packed.Unpack(message)
        details[name] = message
    return proto, details


@pytest.mark.parametrize(("error", "code", "reason"), CASES, ids=lambda c: type(c).__name__)
def test_every_core_error_has_its_code_and_reason(
    error: Exception, code: grpc.StatusCode, reason: str
) -> None:
    assert status_code(error) is code
    status = to_status(error)
    assert status.code is code
    proto, details = _details(status)
    assert proto.code == code.value[0] and proto.message == str(error)
    info = details["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == (reason, ERROR_DOMAIN)


def test_every_core_error_class_is_in_the_table() -> None:
    """A new domain error must get a code of its own, never fall through to INTERNAL."""
    covered = {type(error) for error, _, _ in CASES}
    assert set(errors.SeqServeError.__subclasses__()) <= covered


def test_a_shed_call_carries_its_pushback_and_estimate() -> None:
    """gRPC's retry design (A6): the client waits `grpc-retry-pushback-ms` before retrying."""
    status = to_status(errors.LoadShed("shed", 0.4, 0.25, 0.1504))
    assert ("grpc-retry-pushback-ms", "150") in status.trailing_metadata
    _, details = _details(status)
    info = details["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert dict(info.metadata) == {
        "estimate_ms": "400",
        "deadline_ms": "250",
        "retry_after_ms": "150",
    }


@pytest.mark.parametrize("error", [CASES[0][0], CASES[-1][0]], ids=["InvalidInput", "TensorError"])
def test_bad_input_names_field_expected_and_got(error: Exception) -> None:
    _, details = _details(to_status(error))
    info, bad = details["ErrorInfo"], details["BadRequest"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert dict(info.metadata) == {
        "field": error.field,
        "expected": error.expected,
        "got": error.got,
    }  # type: ignore[attr-defined]
    assert [v.field for v in bad.field_violations] == ["inputs.values"]


def test_an_unknown_model_carries_its_resource() -> None:
    _, details = _details(
        to_status(errors.ModelNotFound("word_lang", available=("word_language",)))
    )
    resource = details["ResourceInfo"]
    assert isinstance(resource, error_details_pb2.ResourceInfo)
    assert (resource.resource_type, resource.resource_name) == ("model", "word_lang")


def test_anything_else_is_internal_and_says_nothing() -> None:
    status = to_status(KeyError("/srv/secret/path.keras"))
    assert status.code is grpc.StatusCode.INTERNAL
    proto, details = _details(status)
    assert proto.message == "internal error"
    info = details["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo) and info.reason == "INTERNAL"


def test_messages_never_carry_server_paths() -> None:
    error = errors.InvalidInput("inputs", "a model file", "/srv/models/x/1/model.keras")
    proto, details = _details(to_status(error))
    assert "/srv/" not in proto.message and "model.keras" in proto.message
    info = details["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo) and "/srv/" not in info.metadata["got"]
