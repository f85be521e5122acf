"""Valid traffic: Predict, PredictStream and Session calls whose every answer must be OK and equal
to what Keras computes in-process for the same input. The fuzzer runs it beside its cases, the
soak runs nothing else."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from seqserve.v1 import seqserve_pb2 as pb
from seqserve.v1 import seqserve_pb2_grpc as pb_grpc
from seqserve_api.tensors import from_tensor, to_batch, to_tensor
from seqserve_client.calls import prediction_from

from .targets import Target

RTOL = ATOL = 1e-5
CALL_TIMEOUT_S = 60.0
KINDS = ("Predict", "PredictStream", "Session")
SEQUENCE_MODES = (pb.ONE_TO_MANY, pb.MANY_TO_MANY_ALIGNED, pb.MANY_TO_MANY_UNALIGNED)


@dataclass(frozen=True)
class Probe:
    """A valid input for one model version and what Keras computes for it in-process."""

    target: Target
    x: np.ndarray
    expected: np.ndarray


def make_probes(targets: list[Target], repository: Path, seed: int, batch: int = 2) -> list[Probe]:
    """Load each served model from the repository in this process and compute the reference."""
    import keras

    rng = np.random.default_rng(seed)
    probes = []
    for target in targets:
        path = repository / target.name / str(target.version) / "model.keras"
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
        x = target.valid_input(rng, batch)
        probes.append(Probe(target, x, np.asarray(model(x, training=False))))
    return probes


def steady_targets(targets: list[Target], min_sessions: int = 16) -> list[Target]:
    """Models whose limits other traffic cannot use up: the fixtures' deliberately tiny
    `limited` model (2 sessions, a queue of 8) answers RESOURCE_EXHAUSTED by design."""
    return [t for t in targets if t.max_sessions >= min_sessions]


class Mismatch(Exception):
    """A valid call answered OK with numbers other than Keras's."""


@dataclass
class ValidStats:
    calls: Counter[str] = field(default_factory=Counter)
    ok: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    @property
    def ok_percent(self) -> float:
        return 100.0 * sum(self.ok.values()) / self.total if self.total else 0.0


async def call(stub: pb_grpc.SeqServeStub, probe: Probe, kind: str, r: random.Random) -> None:
    """One valid call; raises grpc.aio.AioRpcError or Mismatch."""
    if kind == "Predict":
        got = prediction_from(await stub.Predict(_request(probe), timeout=CALL_TIMEOUT_S)).outputs
        _check(kind, probe, np.asarray(got), probe.expected)
    elif kind == "PredictStream":
        parts = [p async for p in stub.PredictStream(_request(probe), timeout=CALL_TIMEOUT_S)]
        _check(kind, probe, _assemble(parts), probe.expected)
    else:
        await _session(stub, probe, r)


def _request(probe: Probe) -> pb.PredictRequest:
    t = probe.target
    return pb.PredictRequest(model_name=t.name, model_version=t.version, inputs=to_batch(probe.x))


def _assemble(parts: list[pb.PredictStreamResponse]) -> np.ndarray:
    """Stream parts back into [batch, ...]: whole vectors, or one step per part."""
    rows: dict[int, dict[int, np.ndarray]] = {}
    for part in parts:
        rows.setdefault(part.input_index, {})[part.step] = from_tensor(part.values)
    out = [np.stack([steps[s] for s in sorted(steps)]) for _, steps in sorted(rows.items())]
    sequence = parts and parts[0].mode in SEQUENCE_MODES
    return np.stack(out) if sequence else np.stack([o[0] for o in out])


async def _session(stub: pb_grpc.SeqServeStub, probe: Probe, r: random.Random) -> None:
    """Feed the first input in uneven pieces; the last output must equal Keras on the whole."""
    t = probe.target
    x = probe.x[0]
    cuts = sorted(r.sample(range(1, len(x)), min(2, len(x) - 1)))
    chunks = np.split(x, cuts)

    async def messages() -> AsyncIterator[pb.SessionRequest]:
        yield pb.SessionRequest(open=pb.SessionOpen(model_name=t.name, model_version=t.version))
        for chunk in chunks:
            yield pb.SessionRequest(steps=pb.SessionSteps(values=to_tensor(chunk)))
        if t.mode == pb.MANY_TO_MANY_UNALIGNED:
            yield pb.SessionRequest(end_input=pb.SessionEndInput())

    outputs = [
        from_tensor(m.output.values)
        async for m in stub.Session(messages(), timeout=CALL_TIMEOUT_S)
        if m.WhichOneof("kind") == "output" and m.output.values.shape
    ]
    want = probe.expected[0]
    if t.mode == pb.MANY_TO_MANY_UNALIGNED:
        _check("Session", probe, np.concatenate(outputs), want)
    elif t.mode == pb.MANY_TO_MANY_ALIGNED:  # the last step is exact for recomputing models too
        _check("Session", probe, outputs[-1][-1], want[-1])
    else:
        _check("Session", probe, outputs[-1], want)


def _check(kind: str, probe: Probe, got: np.ndarray, want: np.ndarray) -> None:
    if got.shape != want.shape or not np.allclose(got, want, rtol=RTOL, atol=ATOL):
        worst = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("nan")
        raise Mismatch(
            f"{kind} {probe.target.name}: served {got.shape} differs from Keras {want.shape} "
            f"(max abs difference {worst:g})"
        )


def kinds_for(probe: Probe) -> list[str]:
    """Session only where the model supports sessions and its input is a sequence."""
    return list(KINDS) if probe.target.sessions else list(KINDS[:2])


async def caller(
    channel: grpc.aio.Channel,
    probes: list[Probe],
    stats: ValidStats,
    stop: asyncio.Event,
    seed: int,
    kinds: tuple[str, ...] = KINDS,
) -> None:
    """Call in a closed loop until `stop` is set; every outcome goes into `stats`."""
    stub = pb_grpc.SeqServeStub(channel)
    r = random.Random(seed)
    while not stop.is_set():
        probe = r.choice(probes)
        kind = r.choice([k for k in kinds_for(probe) if k in kinds] or ["Predict"])
        stats.calls[kind] += 1
        start = time.perf_counter()
        try:
            await call(stub, probe, kind, r)
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name if exc.code() else "?"
            stats.failures.append(f"{kind} {probe.target.name}: {code} {exc.details()}")
            continue
        except Mismatch as exc:
            stats.failures.append(str(exc))
            continue
        stats.ok[kind] += 1
        stats.latencies.append(time.perf_counter() - start)
