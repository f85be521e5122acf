"""Graceful stop: on SIGTERM the server stops taking new work, finishes what is in flight within
its grace period, and exits cleanly."""

from __future__ import annotations

import signal
import threading
import time
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


def test_workers_share_one_port(small_repository: Path) -> None:
    """`--workers 2`: two processes on one port (SO_REUSEPORT); connections reach both."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics = s.getsockname()[1]
    server = start_server(
        small_repository, "--workers", "2", "--port", str(port), "--metrics-port", str(metrics)
    )
    try:
        deadline = time.monotonic() + 120
        while server.output().count("seqserve ready") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        x = [np.ones((4, FEATURES), np.float32)]
        for _ in range(12):  # a channel each: the kernel spreads connections, not requests
            with SeqServeClient(
                server.target, options=[("grpc.use_local_subchannel_pool", 1)]
            ) as c:
                c.predict("aligned", x)
        served = []
        for worker_metrics in (metrics, metrics + 1):
            url = f"http://127.0.0.1:{worker_metrics}/metrics"
            text = urllib.request.urlopen(url, timeout=10).read().decode()
            served.append(sum(
                float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("seqserve_requests_total") and 'code="OK"' in line
            ))  # fmt: skip
        assert sum(served) == 12
        assert all(n > 0 for n in served), served
    finally:
        assert server.stop() == 0
