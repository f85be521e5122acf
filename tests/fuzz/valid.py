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
from typing import Any

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


Named = dict[str, np.ndarray]  # arrays by input (or output) name
Arrays = np.ndarray | Named  # a model with several inputs (outputs) has them by name


@dataclass(frozen=True)
class Probe:
    """A valid input for one model version and what Keras computes for it in-process."""

    target: Target
    x: Arrays
    expected: Arrays


def make_probes(targets: list[Target], repository: Path, seed: int, batch: int = 2) -> list[Probe]:
    """Load each served model from the repository in this process and compute the reference."""
    import keras

    rng = np.random.default_rng(seed)
    probes = []
    for target in targets:
        path = repository / target.name / str(target.version) / "model.keras"
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
        x = target.valid_named(rng, batch) if target.named else target.valid_input(rng, batch)
        probes.append(Probe(target, x, _keras(model, x, target)))
    return probes


def _keras(model: Any, x: Arrays, target: Target) -> Arrays:
    """The eager model on `x`; several outputs by the names the server gives them."""
    if not isinstance(x, dict) or isinstance(model.input, dict):
        y = model(x, training=False)
    else:
        y = model([x[t.name] for t in model.inputs], training=False)
    if isinstance(y, dict):
        named = {k: np.asarray(v) for k, v in y.items()}
    elif isinstance(y, list | tuple):
        named = {k: np.asarray(v) for k, v in zip(model.output_names, y, strict=True)}
    else:
        return np.asarray(y)
    if set(named) != set(target.outputs):
        served = sorted(target.outputs)
        raise RuntimeError(
            f"{target.name}: Keras names outputs {sorted(named)}, the server {served}"
        )
    return named


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
        _check(kind, probe, got, probe.expected)
    elif kind == "PredictStream":
        parts = [p async for p in stub.PredictStream(_request(probe), timeout=CALL_TIMEOUT_S)]
        _check(kind, probe, _assemble(parts), probe.expected)
    else:
        await _session(stub, probe, r)


def _request(probe: Probe) -> pb.PredictRequest:
    t = probe.target
    request = pb.PredictRequest(model_name=t.name, model_version=t.version)
    if isinstance(probe.x, dict):
        for name, x in probe.x.items():
            request.named_inputs[name].CopyFrom(to_batch(x))
    else:
        request.inputs.CopyFrom(to_batch(probe.x))
    return request


def _assemble(parts: list[pb.PredictStreamResponse]) -> Arrays:
    """Stream parts back into [batch, ...]: whole vectors, or one step per part; several
    outputs by name."""
    named: dict[str, list[pb.PredictStreamResponse]] = {}
    for part in parts:
        named.setdefault(part.output_name, []).append(part)
    if list(named) != [""]:
        return {name: _assemble_one(of_one) for name, of_one in named.items()}
    return _assemble_one(parts)


def _assemble_one(parts: list[pb.PredictStreamResponse]) -> np.ndarray:
    rows: dict[int, dict[int, np.ndarray]] = {}
    for part in parts:
        rows.setdefault(part.input_index, {})[part.step] = from_tensor(part.values)
    out = [np.stack([steps[s] for s in sorted(steps)]) for _, steps in sorted(rows.items())]
    sequence = parts and parts[0].mode in SEQUENCE_MODES
    return np.stack(out) if sequence else np.stack([o[0] for o in out])


async def _session(stub: pb_grpc.SeqServeStub, probe: Probe, r: random.Random) -> None:
    """Feed the first input in uneven pieces (a model with several inputs: its static inputs at
    open, every sequence input's pieces by name); the last output must equal Keras on the
    whole."""
    t = probe.target
    first = _item(probe.x, 0)
    opening = pb.SessionOpen(model_name=t.name, model_version=t.version)
    if isinstance(first, dict):
        for spec in t.statics:
            opening.named_inputs[spec.name].CopyFrom(to_tensor(first[spec.name]))
        sequences = {spec.name: first[spec.name] for spec in t.sequences}
    else:
        sequences = {"": first}
    length = len(next(iter(sequences.values())))
    cuts = sorted(r.sample(range(1, length), min(2, length - 1)))
    steps = []
    for start, end in zip([0, *cuts], [*cuts, length], strict=True):
        message = pb.SessionSteps()
        for name, x in sequences.items():
            tensor = message.named_values[name] if name else message.values
            tensor.CopyFrom(to_tensor(x[start:end]))
        steps.append(message)

    async def messages() -> AsyncIterator[pb.SessionRequest]:
        yield pb.SessionRequest(open=opening)
        for message in steps:
            yield pb.SessionRequest(steps=message)
        if t.mode == pb.MANY_TO_MANY_UNALIGNED:
            yield pb.SessionRequest(end_input=pb.SessionEndInput())

    replies = [m async for m in stub.Session(messages(), timeout=CALL_TIMEOUT_S)]
    found = [_output(m.output) for m in replies if m.WhichOneof("kind") == "output"]
    outputs = [o for o in found if o is not None]
    want = _item(probe.expected, 0)
    if t.mode == pb.MANY_TO_MANY_UNALIGNED:
        _check("Session", probe, _joined(outputs), want)
    elif t.mode == pb.MANY_TO_MANY_ALIGNED:  # the last step is exact for recomputing models too
        _check("Session", probe, _item(outputs[-1], -1), _item(want, -1))
    else:
        _check("Session", probe, outputs[-1], want)


def _item(arrays: Arrays, index: int) -> Arrays:
    """Row `index` of one array or of each array by name."""
    if isinstance(arrays, dict):
        return {name: x[index] for name, x in arrays.items()}
    return arrays[index]


def _output(output: pb.SessionOutput) -> Arrays | None:
    """A session output's values; several outputs by name; None when it carries none."""
    if output.named_outputs:
        return {name: from_tensor(t) for name, t in output.named_outputs.items()}
    return from_tensor(output.values) if output.values.shape else None


def _joined(outputs: list[Arrays]) -> Arrays:
    """Decoded pieces of a sequence, concatenated (by name for several outputs)."""
    if outputs and isinstance(outputs[0], dict):
        return {n: np.concatenate([o[n] for o in outputs]) for n in outputs[0]}  # type: ignore[index]
    return np.concatenate(outputs)  # type: ignore[arg-type]


def _check(kind: str, probe: Probe, got: Any, want: Arrays) -> None:
    if isinstance(want, dict) or isinstance(got, dict):
        if not isinstance(got, dict) or not isinstance(want, dict) or set(got) != set(want):
            served = sorted(got) if isinstance(got, dict) else "one array"
            keras = sorted(want) if isinstance(want, dict) else "one array"
            raise Mismatch(f"{kind} {probe.target.name}: served outputs {served}, Keras {keras}")
        for name in want:
            _check(f"{kind} {name!r}", probe, got[name], want[name])
        return
    got = np.asarray(got)
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
