"""The project's own fuzzer, a few hundred seeded cases over every RPC against the session's server
and against a server of the zoo's several-input and several-output models (the full 10,000 run
is `make fuzz`): no INTERNAL/UNKNOWN from any request, the server alive, valid traffic beside
the cases 100% OK and equal to Keras, RSS bounded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from tests.fuzz.cases import RPC_WEIGHTS, SEQSERVE, Case
from tests.fuzz.run import ZOO_MODELS, FuzzConfig, execute, fuzz
from tests.support.model_zoo import save_zoo
from tests.support.server_process import ServerProcess, served


def test_fuzz_every_rpc(server: ServerProcess, repository: Path) -> None:
    config = FuzzConfig(cases=400, seed=20261130, rss_growth_limit=0.10)
    report = asyncio.run(fuzz(server.target, server.process.pid, repository, config))
    print(report.summary())
    assert set(report.codes) == set(RPC_WEIGHTS), "every RPC was fuzzed"
    assert not report.problems(), "\n".join(report.problems())


@pytest.fixture(scope="module")
def zoo_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_zoo(tmp_path_factory.mktemp("fuzz_zoo"), ZOO_MODELS)


def test_fuzz_several_inputs_and_outputs(zoo_repository: Path) -> None:
    """The zoo models `python -m tests.fuzz` adds: static inputs at open and reset
    (`named_inputs`), several sequence inputs' steps (`named_values`), several outputs, a
    model that refuses sessions; valid traffic on them (sessions too) equal to Keras."""
    config = FuzzConfig(cases=300, seed=20261207, rss_growth_limit=0.10)
    with served(zoo_repository) as server:
        report = asyncio.run(fuzz(server.target, server.process.pid, zoo_repository, config))
    print(report.summary())
    assert not report.problems(), "\n".join(report.problems())
    assert report.valid.ok["Session"], "valid sessions of several-input models ran"
    assert report.codes["Session"]["OK"] and report.codes["Session"]["INVALID_ARGUMENT"]


@pytest.mark.parametrize(
    ("method", "shape"),
    [("Predict", "unary"), ("PredictStream", "server_stream"), ("Session", "bidi"),
     ("GetModelMetadata", "unary")],
)  # fmt: skip
def test_a_request_that_does_not_parse_is_invalid_argument(
    server: ServerProcess, method: str, shape: str
) -> None:
    """gRPC Python itself answers UNKNOWN or INTERNAL when a request's bytes do not parse."""
    garbage = b"\x0a\xff\xff\xff\xff\x0f"  # field 1, a length that runs past the end
    case = Case(method, SEQSERVE + method, shape, [garbage], parses=False)

    async def send() -> tuple[str, str]:
        async with grpc.aio.insecure_channel(server.target) as channel:
            with grpc.insecure_channel(server.target) as sync_channel:
                return await execute(channel, sync_channel, case, timeout=30)

    code, details = asyncio.run(send())
    assert code == "INVALID_ARGUMENT", details
    assert f"a message that parses for /seqserve.v1.SeqServe/{method}" in details
