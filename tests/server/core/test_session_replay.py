"""A session remembers its last request and answer, so a retry is answered again, not reapplied
(the Open Inference sequences' exactly-once retries: transport/open_inference/sequences.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from seqserve_server.core import errors
from seqserve_server.core.sessions import MAX_KEPT_REPLY_BYTES, SessionManager
from seqserve_server.transport.status import status_code


def _session() -> Any:
    return SimpleNamespace(request="", reply=b"")  # the two fields replay reads and writes


def test_a_retry_gets_the_kept_answer_and_anything_else_is_new() -> None:
    session = _session()
    SessionManager.remember(session, "r1", b"answer one")
    assert SessionManager.replayed(session, "r1") == b"answer one"
    assert SessionManager.replayed(session, "r2") is None
    SessionManager.remember(session, "r2", b"answer two")  # only the last one is kept
    assert SessionManager.replayed(session, "r1") is None
    assert SessionManager.replayed(session, "r2") == b"answer two"


def test_a_request_without_a_name_is_never_a_retry_and_clears_the_last() -> None:
    session = _session()
    SessionManager.remember(session, "r1", b"answer")
    SessionManager.remember(session, "", b"not kept")
    assert (session.request, session.reply) == ("", b"")
    assert SessionManager.replayed(session, "") is None


def test_an_answer_too_large_to_keep_refuses_its_retry() -> None:
    session = _session()
    SessionManager.remember(session, "big", b"x" * (MAX_KEPT_REPLY_BYTES + 1))
    assert session.reply == b""  # the request is remembered, its answer is not
    with pytest.raises(errors.AlreadyApplied, match="applied to its sequence before") as caught:
        SessionManager.replayed(session, "big")
    assert status_code(caught.value) is grpc.StatusCode.ALREADY_EXISTS
    SessionManager.remember(session, "fits", b"x" * MAX_KEPT_REPLY_BYTES)
    assert len(SessionManager.replayed(session, "fits") or b"") == MAX_KEPT_REPLY_BYTES
