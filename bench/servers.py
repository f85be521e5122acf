"""The servers under test, on 127.0.0.1 only.

The production server starts through `tests/support/server_process.start_server` (the tests' own
launcher: `seqserve serve` on ephemeral ports, ready line parsed); the echo and plain servers
(bench only) are started on a port picked here and are ready when a channel to them connects.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import cpu_seconds
from tests.support.server_process import ServerProcess, start_server


@dataclass
class Running:
    process: subprocess.Popen
    port: int
    metrics_port: int = -1
    server: ServerProcess | None = None
    family: bool = False  # the process's children serve too (--workers): count their CPU

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pids(self) -> list[int]:
        pid = self.process.pid
        return [pid, *children(pid)] if self.family else [pid]

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
    return _bench_server([module, str(shapes)], timeout)


def plain(repository: Path, models: list[str], timeout: float = 180) -> Running:
    """bench/plain_server.py: the same compiled function, called inline, no batching."""
    return _bench_server(["bench.plain_server", str(repository)], timeout, models)


def variant(
    repository: Path,
    layers: str,
    flags: list[str],
    source: Path | None = None,
    timeout: float = 600,
) -> Running:
    """bench/layer_variant.py: `seqserve serve FLAGS` with `layers` (a comma list) taken out;
    `source`: the server package from there (another commit's server/src), not the installed one."""
    env = {"PYTHONPATH": str(source)} if source else {}
    return _bench_server(["bench.layer_variant", layers], timeout, [str(repository), *flags], env)


def _bench_server(
    module: list[str], timeout: float, extra: list[str] | None = None, env: dict | None = None
) -> Running:
    import grpc

    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", *module, str(port), *(extra or [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})},
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
                    raise RuntimeError(f"{module[0]} did not start") from None


def workers(repository: Path, n: int, timeout: float = 600) -> Running:
    """`seqserve serve --workers N` on a fixed free port; ready once every worker said so."""
    port = _free_port()
    server = start_server(
        repository, "--host", "127.0.0.1", "--workers", str(n), "--port", str(port),
        "--metrics-port", "-1", timeout=timeout,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while server.output().count("seqserve ready on") < n:
        if server.process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError("workers did not start:\n" + server.output()[-2000:])
        time.sleep(0.1)
    return Running(server.process, port, -1, server, family=True)


def children(pid: int) -> list[int]:
    """A process's descendants (from /proc), for the CPU they use."""
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except OSError:
            continue
        for kid in kids:
            found += [kid, *children(kid)]
    return found


def startup_seconds(
    repository: Path,
    timeout: float = 300,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> dict:
    """Seconds from starting `seqserve serve [EXTRA]` to health SERVING (polled every 50 ms),
    and the server's CPU seconds by then."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = _free_port()
    command = [
        sys.executable, "-m", "seqserve_server.cli", "serve", "--model-repository",
        str(repository), "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "-1",
        *(extra or []),
    ]  # fmt: skip
    started = time.monotonic()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    try:
        # The port opens once the models are loaded; grpc's reconnect backoff (1 s, x1.6) would
        # find it up to seconds late: retry the connection at the polling interval instead.
        fast_retry = [
            ("grpc.initial_reconnect_backoff_ms", 50),
            ("grpc.min_reconnect_backoff_ms", 50),
            ("grpc.max_reconnect_backoff_ms", 50),
        ]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=fast_retry) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() - started < timeout and process.poll() is None:
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        seconds = time.monotonic() - started
                        cpu = cpu_seconds([process.pid])
                        break
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
            else:
                raise RuntimeError("the server did not become SERVING")
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    models = [
        d for d in repository.iterdir() if d.is_dir() and any(v.name.isdigit() for v in d.iterdir())
    ]
    return {"seconds": seconds, "cpu_seconds": cpu, "models": len(models)}
