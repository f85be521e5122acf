"""The project's own fuzzer, a few hundred seeded cases over every RPC against the session's server
(the full 10,000 run is `make fuzz`): no INTERNAL/UNKNOWN from a request that parses, the server
alive, valid traffic beside the cases 100% OK and equal to Keras, RSS bounded."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.fuzz.cases import RPC_WEIGHTS
from tests.fuzz.run import FuzzConfig, fuzz
from tests.server_process import ServerProcess


def test_fuzz_every_rpc(server: ServerProcess, repository: Path) -> None:
    config = FuzzConfig(cases=400, seed=20261130, rss_growth_limit=0.10)
    report = asyncio.run(fuzz(server.target, server.process.pid, repository, config))
    print(report.summary())
    assert set(report.codes) == set(RPC_WEIGHTS), "every RPC was fuzzed"
    assert not report.problems(), "\n".join(report.problems())
