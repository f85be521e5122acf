"""grpc.aio's ERROR for an answer sent to a call that is gone (`ExecuteBatchError`) becomes
DEBUG when the caller abandoned the call, and stays ERROR otherwise (a live caller: a server
fault such as a response over the message size limit). In-process, with grpc's record shape."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import pytest
from grpc._cython import cygrpc
from prometheus_client import CollectorRegistry

from seqserve.v1 import seqserve_pb2 as pb
from seqserve_server.metrics import ServerMetrics
from seqserve_server.transport import instrumentation
from seqserve_server.transport.instrumentation import (
    GRPC_LOGGER,
    AbandonedCallFilter,
    _Call,
)


class Context:
    """The ServicerContext members the instrumentation reads."""

    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining
        self.callbacks: list[Any] = []

    def time_remaining(self) -> float | None:
        return self.remaining

    def add_done_callback(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def done(self) -> bool:
        return False

    def code(self) -> None:
        return None


class Servicer:
    def __init__(self) -> None:
        self.metrics = ServerMetrics(CollectorRegistry())

    def known_model(self, name: str) -> bool:
        return True

    def known_version(self, name: str, version: int) -> bool:
        return True


def failed_send() -> logging.LogRecord:
    try:
        raise cygrpc.ExecuteBatchError('Failed "execute_batch": (SendMessageOperation,)')
    except cygrpc.ExecuteBatchError:
        record = logging.LogRecord(
            GRPC_LOGGER, logging.ERROR, __file__, 1,
            "ExecuteBatchError raised in core by servicer method [%s]",
            ("/seqserve.v1.SeqServe/Predict",), exc_info=sys.exc_info(),
        )  # fmt: skip
    return record


def abandoned(servicer: Servicer, reason: str) -> float:
    got = servicer.metrics.registry.get_sample_value(
        "seqserve_requests_abandoned_total", {"model": "m", "reason": reason}
    )
    return got or 0.0


async def filtered(remaining: float | None, gone: bool) -> tuple[list[logging.LogRecord], float]:
    """Log grpc's record inside a call's task; the records handlers got and the count."""
    servicer = Servicer()
    context = Context(remaining)
    emitted: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            emitted.append(record)

    logger = logging.getLogger(GRPC_LOGGER)
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    instrumentation.quiet_abandoned_calls()
    try:

        async def rpc() -> None:
            _Call(servicer, "Predict", pb.PredictRequest(model_name="m"), False, context)  # type: ignore[arg-type]
            if gone:  # grpc reports the caller's close after the failed send
                context.callbacks[0](context)
            logger.handle(failed_send())

        await asyncio.create_task(rpc())
        await asyncio.sleep(AbandonedCallFilter.DECIDE_AFTER_S + 0.2)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return emitted, abandoned(servicer, "deadline") + abandoned(servicer, "cancelled")


@pytest.mark.parametrize(
    ("remaining", "gone"), [(0.0, False), (0.03, False), (None, True), (3.0, True)]
)
def test_a_failed_send_to_an_abandoned_call_is_no_error(
    remaining: float | None, gone: bool
) -> None:
    emitted, counted = asyncio.run(filtered(remaining, gone))
    assert [r for r in emitted if r.levelno >= logging.ERROR] == []
    assert counted == 1


def test_a_failed_send_to_a_caller_still_waiting_stays_an_error() -> None:
    emitted, counted = asyncio.run(filtered(None, gone=False))
    assert [r.levelname for r in emitted] == ["ERROR"]
    assert counted == 0
