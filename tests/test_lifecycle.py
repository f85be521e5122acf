"""Graceful stop: on SIGTERM the server stops taking new work, finishes what is in flight within
its grace period, and exits cleanly."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import numpy as np
import pytest

from seqserve_client import SeqServeClient, SeqServeError
from tests.fixture_models import FEATURES, write_repository
from tests.server_process import start_server


@pytest.fixture(scope="module")
def small_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("small"), only={"aligned"})


def test_sigterm_drains_in_flight_work_then_exits(small_repository: Path) -> None:
    server = start_server(small_repository, "--grace-period-s", "20")
    inputs = [np.ones((400, FEATURES), np.float32)] * 200  # many parts: takes a while to stream
    parts: list = []
    failure: list[BaseException] = []
    started = threading.Event()

    def stream() -> None:
        with SeqServeClient(server.target) as c:
            try:
                for part in c.predict_stream("aligned", inputs):
                    parts.append(part)
                    started.set()
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                failure.append(exc)
                started.set()

    thread = threading.Thread(target=stream)
    thread.start()
    assert started.wait(60)
    server.process.send_signal(signal.SIGTERM)
    thread.join(60)
    assert not failure, failure
    assert len(parts) == 200 * 400, "the in-flight stream must finish"
    assert server.process.wait(30) == 0
    with SeqServeClient(server.target, timeout=2) as c, pytest.raises(SeqServeError):
        c.predict("aligned", inputs[:1])
    assert "stopping" in server.output()
