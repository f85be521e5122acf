"""60 s of the soak (`make soak` runs 10 minutes): 64 callers of mixed valid traffic, 0 errors,
RSS growth within 5% after warm-up, open sessions and file descriptors back to baseline."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.soak import SoakConfig, soak
from tests.support.server_process import ServerProcess


@pytest.mark.slow
def test_soak_one_minute(server: ServerProcess, repository: Path) -> None:
    config = SoakConfig(duration_s=60, callers=64)
    report = asyncio.run(soak(server.target, server.process.pid, repository, config))
    print(report.summary())
    assert report.traffic.total > 0
    assert not report.problems(), "\n".join(report.problems())
