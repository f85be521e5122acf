"""The server-wide front door (core/call_admission.py) applied to the unary inference calls of
both protocols: a transport/calls.py wrap, inside the token check (so the caller is the
token's name) and before the servicer does any work. A refusal is `RESOURCE_EXHAUSTED` with
`grpc-retry-pushback-ms`, as the batcher's own (transport/status.py).

Streams are not queued here: a session or a stream holds its call for its whole life, so a
slot per stream would let a few thousand sessions lock out every unary call; sessions have
their own limits (`max_sessions`, and new ones refused once the server has been congested for
a second: `CallAdmission.admit_session`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from ..core.call_admission import PEER_PREFIX, CallAdmission
from ..core.errors import LoadShed
from .auth import CALLER
from .status import to_status

ADMITTED = frozenset(
    {"/seqserve.v1.SeqServe/Predict", "/inference.GRPCInferenceService/ModelInfer"}
)


def caller_of(context: grpc.aio.ServicerContext) -> str:
    """The caller a fair share belongs to: the token's name, or the peer's address without
    its port (one host's connections are one caller)."""
    name = CALLER.get()
    if name:
        return name
    peer = context.peer() or ""
    host, _, _ = peer.rpartition(":")
    return PEER_PREFIX + (host or peer)


class FrontDoor:
    """The wrap: calls of `ADMITTED` methods start through `admission`."""

    def __init__(self, admission: CallAdmission) -> None:
        self.admission = admission

    def wrap(self, method: str, handler: Any) -> Any:
        if method not in ADMITTED or handler.request_streaming or handler.response_streaming:
            return handler
        return handler._replace(unary_unary=self._admitted(handler.unary_unary))

    def _admitted(self, inner: Callable[..., Any]) -> Callable[..., Any]:
        admission = self.admission

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                ticket = await admission.enter(caller_of(context), context.time_remaining())
            except LoadShed as exc:
                await context.abort_with_status(to_status(exc))
            try:
                return await inner(request, context)
            finally:
                admission.leave(ticket)

        return unary
