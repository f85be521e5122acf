"""The servers under test, on 127.0.0.1 only.

The production server starts through `tests/support/server_process.start_server` (the tests' own
launcher: `seqserve serve` on ephemeral ports, ready line parsed); the echo server (bench only)
is started on a port picked here and is ready when a channel to it connects.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.server_process import ServerProcess, start_server


@dataclass
class Running:
    process: subprocess.Popen
    port: int
    metrics_port: int = -1
    server: ServerProcess | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pids(self) -> list[int]:
        return [self.process.pid]

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(15)
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def serve(repository: Path, args: list[str], env: dict[str, str] | None = None) -> Running:
    """`seqserve serve --model-repository REPO --port 0 --metrics-port 0 ARGS` (host 127.0.0.1)."""
    server = start_server(repository, "--host", "127.0.0.1", *args, **(env or {}))
    return Running(server.process, server.port, server.metrics_port, server)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def echo(shapes: Path, timeout: float = 60, module: str = "bench.echo_server") -> Running:
    """bench/echo_server.py (or `module`, e.g. bench.session_echo): gRPC + protobuf only."""
    import grpc

    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", module, str(shapes), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ),
    )  # fmt: skip
    running = Running(process, port)
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(running.target) as channel:
        while True:
            try:
                grpc.channel_ready_future(channel).result(timeout=1)
                return running
            except grpc.FutureTimeoutError:
                if process.poll() is not None or time.monotonic() > deadline:
                    running.stop()
                    raise RuntimeError("the echo server did not start") from None
