"""Errors inside ModelStreamInfer: the stream stays open, so each one travels as the text of its
response's `error_message`, coded as seqserve.v1 codes the same error (one table: ../status.py)."""

from __future__ import annotations

import logging

import grpc

from ...core.tf_errors import from_tensorflow
from ..status import status_code, to_status

log = logging.getLogger(__name__)


def stream_error(exc: Exception) -> str:
    """ "<CODE>: <message>", e.g. "INVALID_ARGUMENT: input: expected [batch, 4], got [2, 5]"."""
    exc = from_tensorflow(exc)
    code = status_code(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("internal error", exc_info=exc)
    return f"{code.name}: {to_status(exc).details}"
