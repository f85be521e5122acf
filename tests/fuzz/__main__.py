"""`python -m tests.fuzz [--cases N] [--seed S] [--repository DIR] [--zoo NAMES]`: start a real
server on 127.0.0.1 (ephemeral port) serving DIR and the zoo models NAMES (comma-separated, by
default run.ZOO_MODELS: several inputs and outputs; `--zoo ''` for DIR alone), fuzz it, print the
summary; exit 1 on any problem.

`--replay SEED:INDEX` prints one case (its RPC, tags and messages as text) instead, to read a
finding; the summary names each finding by its SEED:INDEX.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--valid-callers", type=int, default=2)
    parser.add_argument("--time-limit-s", type=float, default=1800.0)
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--zoo", default=None, help="zoo models served beside the repository's")
    parser.add_argument("--replay", help="SEED:INDEX: print that case and exit")
    parser.add_argument("server_args", nargs="*", help="extra `seqserve serve` flags (after --)")
    args = parser.parse_args(argv)
    from .run import ZOO_MODELS

    zoo = ZOO_MODELS if args.zoo is None else tuple(n for n in args.zoo.split(",") if n)
    with _repository(args.repository, zoo) as repository:
        if args.replay:
            return _replay(args.replay, repository, args.server_args)
        return _fuzz(args, repository, zoo)


@contextlib.contextmanager
def _repository(repository: Path, zoo: tuple[str, ...]) -> Iterator[Path]:
    """`repository`, or (with zoo models) a temporary one holding its models and theirs."""
    from .run import with_zoo

    if not zoo:
        yield repository
        return
    with tempfile.TemporaryDirectory(prefix="fuzz-repository-") as root:
        yield with_zoo(repository, zoo, Path(root))


def _fuzz(args: argparse.Namespace, repository: Path, zoo: tuple[str, ...]) -> int:
    from tests.support.server_process import start_server

    from .run import FuzzConfig, fuzz

    config = FuzzConfig(
        cases=args.cases, seed=args.seed, concurrency=args.concurrency,
        valid_callers=args.valid_callers, time_limit_s=args.time_limit_s,
    )  # fmt: skip
    server = start_server(repository, *args.server_args)
    served = f"{args.repository}" + (f" and the zoo's {', '.join(zoo)}" if zoo else "")
    print(f"fuzzing {server.target} (pid {server.process.pid}) serving {served}")
    try:
        report = asyncio.run(fuzz(server.target, server.process.pid, repository, config, log=True))
    finally:
        server.stop()
    print(report.summary())
    problems = report.problems()
    for problem in problems:
        print("PROBLEM:", problem)
    return 1 if problems else 0


def _replay(spec: str, repository: Path, server_args: list[str]) -> int:
    """Start the server to learn its models (cases depend on them), then print one case."""
    import grpc

    from tests.support.server_process import start_server

    from .cases import make_case
    from .targets import discover

    seed, index = (int(part) for part in spec.split(":"))
    server = start_server(repository, *server_args)

    async def targets() -> list:
        async with grpc.aio.insecure_channel(server.target) as channel:
            return await discover(channel)

    try:
        case = make_case(seed, index, asyncio.run(targets()))
    finally:
        server.stop()
    print(case.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
