"""Graceful stop: on SIGTERM the server stops taking new work, finishes what is in flight within
its grace period, and exits cleanly."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from seqserve_client import SeqServeClient, SeqServeError
from tests.support.channels import RETRYING
from tests.support.model_zoo import FEATURES
from tests.support.server_process import ServerProcess, free_port, start_server


def test_sigterm_drains_in_flight_work_then_exits(small_repository: Path) -> None:
    # Many parts (seconds to stream), well within the grace and the caller's deadline even on
    # 2 cores shared with other work.
    server = start_server(small_repository, "--grace-period-s", "90")
    inputs = [np.ones((400, FEATURES), np.float32)] * 50
    parts: list = []
    failure: list[BaseException] = []
    started = threading.Event()

    def stream() -> None:
        with SeqServeClient(server.target, timeout=120) as c:
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
    thread.join(120)
    assert not failure, failure
    assert len(parts) == 50 * 400, "the in-flight stream must finish"
    assert server.process.wait(30) == 0
    with SeqServeClient(server.target, timeout=2) as c, pytest.raises(SeqServeError):
        c.predict("aligned", inputs[:1])
    assert "stopping" in server.output()


@pytest.fixture(scope="module")
def workers(small_repository: Path) -> Iterator[ServerProcess]:
    """`--workers 2` on one port; metrics on their own ports (metrics_port + index)."""
    port, metrics = free_port(), free_port()
    server = start_server(
        small_repository, "--workers", "2", "--port", str(port), "--metrics-port", str(metrics)
    )
    server.metrics_port = metrics
    wait_for(lambda: server.output().count("seqserve ready") >= 2, 120)
    yield server
    assert server.stop() == 0


def wait_for(condition: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def exited(pid: int) -> bool:
    """Dead (a zombie, or reaped): its files, sockets included, are closed."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in "ZX"
    except FileNotFoundError:
        return True


def test_workers_share_one_port(workers: ServerProcess) -> None:
    """`--workers 2`: two processes on one port (SO_REUSEPORT); connections reach both."""
    x = [np.ones((4, FEATURES), np.float32)]
    for _ in range(12):  # a channel each: the kernel spreads connections, not requests
        with SeqServeClient(workers.target, options=[("grpc.use_local_subchannel_pool", 1)]) as c:
            c.predict("aligned", x)
    served = []
    for worker_metrics in (workers.metrics_port, workers.metrics_port + 1):
        url = f"http://127.0.0.1:{worker_metrics}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        served.append(sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("seqserve_requests_total") and 'code="OK"' in line
        ))  # fmt: skip
    assert sum(served) == 12
    assert all(n > 0 for n in served), served


def test_a_worker_that_dies_is_restarted(workers: ServerProcess) -> None:
    """kill -9 one worker: the other keeps answering (a connection caught in the dead one's
    accept queue is reset, which a client retrying UNAVAILABLE rides over), and a new worker
    takes the dead one's place."""
    before = children(workers.process.pid)
    assert len(before) == 2
    os.kill(before[0], signal.SIGKILL)
    wait_for(lambda: exited(before[0]), 10)
    x = [np.ones((4, FEATURES), np.float32)]
    options = [("grpc.use_local_subchannel_pool", 1), *RETRYING]
    for _ in range(10):
        with SeqServeClient(workers.target, options=options) as c:
            assert c.predict("aligned", x).shape == (1, 4, 2)
    wait_for(lambda: workers.output().count("seqserve ready") >= 3, 120)
    after = children(workers.process.pid)
    assert len(after) == 2 and before[0] not in after and before[1] in after
    assert "worker 0 exited with code -9" in workers.output()
    with SeqServeClient(workers.target, options=options) as c:
        assert c.predict("aligned", x).shape == (1, 4, 2)
