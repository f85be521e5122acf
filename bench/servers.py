"""Start the servers under test as subprocesses on 127.0.0.1 and wait for their ready line."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

READY = re.compile(r"seqserve ready on ([\d.]+):(\d+)")


@dataclass
class Running:
    processes: list[subprocess.Popen[str]]
    port: int
    logs: list[list[str]] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def stop(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.processes:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_one(command: list[str], env: dict[str, str], timeout: float) -> tuple:
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env},
    )
    log: list[str] = []
    found: list[re.Match[str]] = []
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            log.append(line)
            match = READY.search(line)
            if match and not found:
                found.append(match)
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            process.kill()
            raise TimeoutError("server did not start:\n" + "".join(log))
    if not found:
        raise RuntimeError("server exited before it was ready:\n" + "".join(log[-40:]))
    return process, int(found[0].group(2)), log


def start(
    kind: str,
    repository: Path,
    args: list[str],
    env: dict[str, str],
    workers: int = 1,
    echo_shapes: Path | None = None,
    timeout: float = 120,
) -> Running:
    """kind: "echo", "old" (the server as it is) or "new" (bench.patched_server: batcher)."""
    if kind == "echo":
        assert echo_shapes is not None
        process, port, log = _start_one(
            [sys.executable, "-m", "bench.echo_server", str(echo_shapes)], env, timeout
        )
        return Running([process], port, [log])
    module = {"old": "seqserve_server.cli", "new": "bench.patched_server"}[kind]
    port = free_port() if workers > 1 else 0
    if workers > 1:
        env = {**env, "BENCH_REUSEPORT": "1"}
    running = None
    for _ in range(workers):
        command = [
            sys.executable, "-m", module, "serve", "--model-repository", str(repository),
            "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0", *args,
        ]  # fmt: skip
        process, bound, log = _start_one(command, env, timeout)
        if running is None:
            running = Running([process], bound, [log])
        else:
            running.processes.append(process)
            running.logs.append(log)
    assert running is not None
    return running
