"""Start the real server as a subprocess on 127.0.0.1 with ephemeral ports, as users run it."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READY = re.compile(r"seqserve ready on ([\d.]+):(\d+) metrics (-?\d+)")


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    host: str
    port: int
    metrics_port: int
    log: list[str] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def output(self) -> str:
        return "".join(self.log)


def start_server(repository: Path, *args: str, timeout: float = 600, **env: str) -> ServerProcess:
    """Run `seqserve serve` until it prints its ready line; its output is kept in `.log`.

    Every model version is proven against eager Keras before the server is ready (a few
    seconds each), so a repository of many models takes minutes on a busy 2-core machine."""
    command = [
        sys.executable, "-m", "seqserve_server.cli", "serve",
        "--model-repository", str(repository), "--port", "0", "--metrics-port", "0", *args,
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env},
    )
    log: list[str] = []
    ready = threading.Event()
    found: list[re.Match[str]] = []

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
        raise RuntimeError("server exited before it was ready:\n" + "".join(log))
    host, port, metrics = found[0].groups()
    return ServerProcess(process, host, int(port), int(metrics), log)


@contextlib.contextmanager
def served(repository: Path, *args: str, **env: str) -> Iterator[ServerProcess]:
    """`start_server` for the length of a `with` block (a fixture's lifetime)."""
    process = start_server(repository, *args, **env)
    try:
        yield process
    finally:
        process.stop()


@contextlib.contextmanager
def v2_client(target: str) -> Iterator[Any]:
    """A stock `tritonclient.grpc` client of a server's Open Inference Protocol."""
    import tritonclient.grpc as triton  # only the v2 tests need it

    client = triton.InferenceServerClient(target)
    try:
        yield client
    finally:
        client.close()


def free_port() -> int:
    """A port free on 127.0.0.1 now, for servers that must be told theirs (shared ports)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """A process's resident set size (VmRSS), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def open_fds(pid: int) -> int:
    """How many file descriptors a process holds open (sockets, pipes, files)."""
    return len(os.listdir(f"/proc/{pid}/fd"))
