"""`--workers N`: N server processes sharing one port through SO_REUSEPORT.

One asyncio process saturates one core with gRPC work before the model does; on a machine with
more cores, more processes serve more requests. The kernel spreads *connections* over the
processes, so callers need several channels (or a load balancer in front) to use them all.
Each worker exposes its own metrics on `--metrics-port + i`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from types import FrameType

from .config import Settings


def child_command(settings: Settings, index: int) -> list[str]:
    """The flags of worker `index`: the parent's settings, one process, a port of its own for
    metrics, and the shared gRPC port opened with SO_REUSEPORT."""
    values = settings.model_dump()
    values.update(workers=1, reuse_port=True)
    if settings.metrics_port > 0:
        values["metrics_port"] = settings.metrics_port + index
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in values.items()]
    return [sys.executable, "-m", "seqserve_server.cli", "serve", *flags]


def run_workers(settings: Settings) -> int:
    """Start the workers, forward SIGINT/SIGTERM to them, and wait for all of them."""
    if settings.port == 0:
        print("--workers needs a fixed --port: workers share it", file=sys.stderr)
        return 2
    children = [subprocess.Popen(child_command(settings, i)) for i in range(settings.workers)]

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    return max(child.wait() for child in children)
