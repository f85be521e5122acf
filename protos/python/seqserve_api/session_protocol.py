"""Rules of the Session stream that both ends must agree on, so they live beside the messages."""

from __future__ import annotations

from seqserve.v1 import seqserve_pb2 as pb


def steps_get_output(mode: pb.Mode.ValueType, emit_on_request: bool, emit: bool) -> bool:
    """Whether the server answers a `SessionSteps` message with a `SessionOutput`.

    Aligned sessions answer every message (one output step per input step); many-to-one sessions
    answer every message, or with `emit_on_request` only those with `emit` set; the other modes
    answer only `SessionEndInput`.
    """
    if mode == pb.MANY_TO_MANY_ALIGNED:
        return True
    return mode == pb.MANY_TO_ONE and (emit or not emit_on_request)
