"""`--workers N`: N server processes sharing one port through SO_REUSEPORT, kept running.

One asyncio process saturates one core with gRPC work before the model does; on a machine with
more cores, more processes serve more requests. The kernel spreads *connections* over the
processes, so callers need several channels (or a load balancer in front) to use them all.
Each worker exposes its own metrics on `--metrics-port + i`.

A worker that dies (killed, out of memory) is started again in its place, after a delay that
grows while it keeps dying soon after starting; the others serve meanwhile. SIGINT/SIGTERM go to
every worker, and the parent returns once all of them have stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

from .config import Settings

log = logging.getLogger(__name__)

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 30.0
STABLE_S = 60.0  # a worker up this long counts as healthy again: its delay starts over


def child_command(settings: Settings, index: int) -> list[str]:
    """The flags of worker `index`: the parent's settings, one process, a port of its own for
    metrics, and the shared gRPC port opened with SO_REUSEPORT."""
    values = settings.model_dump()
    values.update(workers=1, reuse_port=True)
    if settings.metrics_port > 0:
        values["metrics_port"] = settings.metrics_port + index
    flags = [  # a setting left unset (None) stays unset: no flag for it
        f"--{name.replace('_', '-')}={value}" for name, value in values.items() if value is not None
    ]
    return [sys.executable, "-m", "seqserve_server.cli", "serve", *flags]


class Supervisor:
    """Start the workers, restart any that dies, forward stop signals, collect exit codes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.children: dict[int, subprocess.Popen[bytes]] = {}  # index -> live worker
        self.started: dict[int, float] = {}
        self.delays: dict[int, float] = {}
        self.stopping = False
        self.codes: list[int] = []

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._forward)
        for index in range(self.settings.workers):
            self._spawn(index)
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:  # none left
                break
            worker = next((i for i, c in self.children.items() if c.pid == pid), None)
            if worker is None:
                continue
            del self.children[worker]
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                self.codes.append(code)
            else:
                self._restart(worker, code)
        return max(self.codes, default=0)

    def _spawn(self, index: int) -> None:
        self.children[index] = subprocess.Popen(child_command(self.settings, index))
        self.started[index] = time.monotonic()

    def _restart(self, index: int, code: int) -> None:
        """Start worker `index` again; sooner if it had run a while, later if it keeps dying."""
        uptime = time.monotonic() - self.started[index]
        delay = FIRST_DELAY_S if uptime >= STABLE_S else self.delays.get(index, FIRST_DELAY_S)
        self.delays[index] = min(delay * 2, MAX_DELAY_S)
        log.warning(
            "worker %d exited with code %d after %.0f s: starting it again in %.0f s",
            index, code, uptime, delay,
        )  # fmt: skip
        until = time.monotonic() + delay
        while time.monotonic() < until and not self.stopping:
            time.sleep(0.1)
        if not self.stopping:
            self._spawn(index)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        """os.kill, not Popen.send_signal: that one polls, which could reap a worker that
        `run` waits for. A dead worker stays a zombie until `run` reaps it: its pid is safe."""
        self.stopping = True
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)


def run_workers(settings: Settings) -> int:
    if settings.port == 0:
        print("--workers needs a fixed --port: workers share it", file=sys.stderr)
        return 2
    return Supervisor(settings).run()
