"""`python -m bench.checkpoint_cost [--rounds N]`: what resumable sessions cost (issue 23).

One production server with a session key serves the bundled models on 127.0.0.1. For every
bundled model that runs sessions, through the Session RPC (raw stubs, one caller):

- a checkpoint's size (bytes of its token) and round trip (a `checkpoint` request answered),
  after 10 steps;
- the single-step round trip of a plain session and of a resumable one (`checkpoint_every` 8:
  a token sealed and sent every 8th step), in alternating blocks so both see the same machine;
  the goal is resumable <= 1.1x plain.

Writes bench/results/checkpoint_cost.md and prints the table. Bounded in count and time.
"""

from __future__ import annotations

import argparse
import queue
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from bench import servers
from bench.models import BUNDLED
from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc
from seqserve_api.tensors import to_tensor

RESULTS = Path(__file__).resolve().parent / "results"
CHECKPOINT_EVERY = 8
BLOCK = 40  # single-step messages per block
GOAL = 1.1


class Session:
    """One Session call, message by message."""

    def __init__(self, stub: pb_grpc.SeqServeStub, opening: pb.SessionOpen) -> None:
        self.requests: queue.Queue[pb.SessionRequest | None] = queue.Queue()
        self.responses = stub.Session(iter(self.requests.get, None), timeout=600)
        self.requests.put(pb.SessionRequest(open=opening))
        self.opened = next(self.responses).opened

    def ask(self, request: pb.SessionRequest, answers: int) -> list[pb.SessionResponse]:
        self.requests.put(request)
        return [next(self.responses) for _ in range(answers)]

    def close(self) -> None:
        self.requests.put(None)


def _step(meta: pb.GetModelMetadataResponse) -> pb.SessionRequest:
    """One step of the model's first input: zeros of its features, or token id 1."""
    spec = meta.inputs[0]
    if spec.dtype in (pb.INT32, pb.INT64):
        return pb.SessionRequest(steps=pb.SessionSteps(values=to_tensor(np.ones(1, np.int32))))
    values = np.full((1, spec.shape[-1]), 0.1, np.float32)
    return pb.SessionRequest(steps=pb.SessionSteps(values=to_tensor(values)))


def _answers(meta: pb.GetModelMetadataResponse) -> int:
    return 1 if meta.mode in (pb.MANY_TO_ONE, pb.MANY_TO_MANY_ALIGNED) else 0


def measure(stub: pb_grpc.SeqServeStub, name: str, rounds: int) -> dict[str, float] | None:
    meta = stub.GetModelMetadata(pb.GetModelMetadataRequest(model_name=name), timeout=30)
    if meta.session_support == pb.SESSION_UNSUPPORTED or len(meta.inputs) != 1:
        return None
    step, answers = _step(meta), _answers(meta)
    cap = meta.max_sequence_length or 10**9  # steps a session takes since open or reset
    plain = Session(stub, pb.SessionOpen(model_name=name))
    resumable = Session(stub, pb.SessionOpen(model_name=name, checkpoint_every=CHECKPOINT_EVERY))
    fed = {"plain": 0, "resumable": 0}
    for label, session in (("plain", plain), ("resumable", resumable)):
        for _ in range(min(CHECKPOINT_EVERY - 1, cap)):
            session.ask(step, answers)
            fed[label] += 1
    sizes, seal = [], []
    for _ in range(20):
        start = time.perf_counter()
        (answer,) = resumable.ask(pb.SessionRequest(checkpoint=pb.SessionCheckpointRequest()), 1)
        seal.append(time.perf_counter() - start)
        sizes.append(len(answer.checkpoint.token))
    times: dict[str, list[float]] = {"plain": [], "resumable": []}
    since = 0  # resumable: steps since its last checkpoint
    for _ in range(rounds):
        for label, session in (("plain", plain), ("resumable", resumable)):
            for _ in range(BLOCK):
                if fed[label] == cap:  # the model's length: start again (not timed)
                    session.ask(pb.SessionRequest(reset=pb.SessionReset()), 1)
                    fed[label] = 0
                    since = 0 if label == "resumable" else since
                due = label == "resumable" and since + 1 >= CHECKPOINT_EVERY
                start = time.perf_counter()
                session.ask(step, answers + (1 if due else 0))
                times[label].append(time.perf_counter() - start)
                fed[label] += 1
                if label == "resumable":
                    since = 0 if due else since + 1
    plain.close()
    resumable.close()
    result = {"token_bytes": statistics.median(sizes), "checkpoint_ms": _ms(seal)}
    result["answered"] = answers
    result["plain_ms"] = _ms(times["plain"])
    result["resumable_ms"] = _ms(times["resumable"])
    result["resumable_mean_ms"] = 1000 * statistics.fmean(times["resumable"])
    result["plain_mean_ms"] = 1000 * statistics.fmean(times["plain"])
    result["ratio"] = result["resumable_mean_ms"] / result["plain_mean_ms"]
    return result


def _ms(seconds: list[float]) -> float:
    return 1000 * statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="alternating blocks per model")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "session.keys"
        keys.write_text(secrets.token_hex(32) + "\n")
        server = servers.serve(BUNDLED, ["--session-key-file", str(keys)])
        try:
            with grpc.insecure_channel(server.target) as channel:
                stub = pb_grpc.SeqServeStub(channel)
                names = sorted(m.name for m in stub.ListModels(pb.ListModelsRequest()).models)
                rows = {n: r for n in names if (r := measure(stub, n, args.rounds)) is not None}
        finally:
            server.stop()
    table = _table(rows, args.rounds)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "checkpoint_cost.md").write_text(table + "\n")


def _table(rows: dict[str, dict[str, float]], rounds: int) -> str:
    lines = [
        f"`python -m bench.checkpoint_cost --rounds {rounds}` ({time.strftime('%Y-%m-%d %H:%M')}, "
        f"one caller; single-step round trips over {rounds} alternating blocks of {BLOCK}; "
        f"resumable: checkpoint_every {CHECKPOINT_EVERY}, the checkpoints in its mean; goal: "
        f"<= {GOAL}x plain)",
        "",
        "| model | token bytes | checkpoint round trip | step plain (median / mean) "
        "| step resumable (median / mean) | ratio of means |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        if not r["answered"]:
            lines.append(
                f"| {name} | {r['token_bytes']:,.0f} | {r['checkpoint_ms']:.2f} ms | - | - "
                "| - (steps get no answer: unaligned) |"
            )
            continue
        lines.append(
            f"| {name} | {r['token_bytes']:,.0f} | {r['checkpoint_ms']:.2f} ms "
            f"| {r['plain_ms']:.2f} / {r['plain_mean_ms']:.2f} ms "
            f"| {r['resumable_ms']:.2f} / {r['resumable_mean_ms']:.2f} ms | {r['ratio']:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
