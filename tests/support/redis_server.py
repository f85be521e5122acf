"""A throwaway Redis (Debian's `redis-server`, `make test-tools` installs it) on 127.0.0.1 on a
free port, persisting nothing: the shared session store of the tests and benchmarks."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

from tests.support.server_process import free_port

MISSING = "no redis-server on PATH (`make test-tools` installs Debian's redis-server)"


def available() -> bool:
    return shutil.which("redis-server") is not None


@contextlib.contextmanager
def redis_server(timeout: float = 30) -> Iterator[str]:
    """A running redis-server for the `with` block: its URL (redis://127.0.0.1:PORT/0)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError(MISSING)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="redis-") as workdir:
        command = [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", workdir, "--daemonize", "no",
            "--logfile", f"{workdir}/redis.log",
        ]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            _wait_for(port, process, timeout, f"{workdir}/redis.log")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for(port: int, process: subprocess.Popen[bytes], timeout: float, log: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            with contextlib.suppress(OSError), open(log) as f:
                log = f.read()
            raise RuntimeError(f"redis-server exited ({process.returncode}):\n{log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return
        time.sleep(0.05)
    process.kill()
    raise TimeoutError(f"redis-server did not answer on port {port}")
