"""Structure-aware cases: a valid request for a served model, then mutations of its fields.

Every case is a list of serialized messages for one RPC, built from `random.Random(seed, index)`
alone, so a finding replays from its seed and index (`python -m tests.fuzz --replay SEED:INDEX`).
A few cases also flip, cut or extend the serialized bytes; whether the result still parses as the
RPC's request type is recorded (the summary counts those apart), and they too must not get
INTERNAL or UNKNOWN.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2

from seqserve.v1 import seqserve_pb2 as pb
from seqserve_api.tensors import to_tensor

from .targets import Target

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)
BAD_DTYPES = [-1, 7, 8, 100, INT32_MAX, INT32_MIN]
HUGE_DIMS = [2**31 - 1, 2**31, 2**32 + 1, 2**40, 2**62, INT64_MAX, 6148914691236517206]
NEGATIVE = [-1, -2, INT32_MIN, INT64_MIN]
# Shapes whose int64 product wraps around to a small count (or to a negative one).
WRAPPING_SHAPES = [
    [3, 6148914691236517206],  # 2**64 + 2: two elements
    [2**32, 2**32],  # 2**64: zero elements
    [2**32, 2**32, 3],
    [150, INT64_MAX, INT64_MAX],
    [-3, -6148914691236517206],
    [2**62, 4, 3],
    [1, 2**63 - 1, 2],
]
NAMES = ["", "nope", "../../etc/passwd", "modèle🙂", "a" * 300, "x" * 100_000, " ", "model\t1"]
VERSIONS = [-1, 2, 7, 99, INT64_MAX, INT64_MIN, INT32_MAX + 1]
TOP_KS = [-1, INT32_MIN, INT32_MAX, 10**6, 1, 2, 3, 11]
NONFINITE = [np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-45]
# STRING elements: text (also non-ASCII and empty), invalid UTF-8, and oversize (past the 64 KiB
# per-element default).
TEXTS = [b"", b"hello", "h\u00e9llo \U0001f642".encode(), b"a\x00b", b"  "]
BAD_UTF8 = [b"\xff", b"\xc3(", b"\xed\xa0\x80", b"ok\x80", b"\xf4\x90\x80\x80"]
OVERSIZE = [64 * 1024 + 1, 200_000, 1_000_000]
SEQSERVE = "/seqserve.v1.SeqServe/"
HEALTH = "/grpc.health.v1.Health/"


@dataclass
class Case:
    rpc: str  # Predict, PredictStream, Session, ListModels, GetModelMetadata, Health
    method: str
    shape: str  # unary, server_stream, bidi
    messages: list[bytes]
    parses: bool = True
    tags: list[str] = field(default_factory=list)
    request_type: type[Message] | None = None

    def describe(self) -> str:
        """The messages as text (hex where they do not parse), to read a finding."""
        lines = [f"{self.rpc} {self.method} tags={self.tags} parses={self.parses}"]
        for data in self.messages:
            if self.request_type is not None and _parses(data, self.request_type):
                text = str(self.request_type.FromString(data))
                lines.append(text if len(text) < 4000 else text[:4000] + " ...")
            else:
                lines.append(f"{data[:400].hex()} ({len(data)} bytes)")
        return "\n".join(lines)


# -- tensors ----------------------------------------------------------------------------------


def _itemsize(t: pb.Tensor) -> int:
    return {pb.FLOAT64: 8, pb.INT64: 8, pb.FLOAT16: 2}.get(t.dtype, 4)


def _wrapped(shape: list[int]) -> int:
    """The element count numpy's int64 product gives: wrapped around modulo 2**64."""
    product = 1
    for d in shape:
        product *= d
    return _int64(product)


def _int64(n: int) -> int:
    """`n` as int64 holds it: wrapped around, as a careless caller's arithmetic would."""
    n %= 2**64
    return n - 2**64 if n >= 2**63 else n


def _set_shape(t: pb.Tensor, shape: list[int]) -> None:
    del t.shape[:]
    t.shape.extend(_int64(d) for d in shape)


def m_dtype_undefined(t: pb.Tensor, r: random.Random) -> None:
    t.dtype = r.choice(BAD_DTYPES)  # type: ignore[assignment]


def m_dtype_other(t: pb.Tensor, r: random.Random) -> None:
    t.dtype = r.choice([0, 1, 2, 3, 4, 5, 6])  # type: ignore[assignment]


def m_dim_huge(t: pb.Tensor, r: random.Random) -> None:
    if t.shape:
        t.shape[r.randrange(len(t.shape))] = r.choice(HUGE_DIMS)


def m_dim_negative(t: pb.Tensor, r: random.Random) -> None:
    if t.shape:
        t.shape[r.randrange(len(t.shape))] = r.choice(NEGATIVE)


def m_dim_zero(t: pb.Tensor, r: random.Random) -> None:
    if t.shape:
        t.shape[r.randrange(len(t.shape))] = 0
    if r.random() < 0.7:
        t.raw = b""


def m_shape_wraps(t: pb.Tensor, r: random.Random) -> None:
    """A shape whose product overflows, with the byte count of the wrapped-around product."""
    shape = list(r.choice(WRAPPING_SHAPES))
    _set_shape(t, shape)
    count = _wrapped(shape)
    if 0 <= count <= 4096:
        t.raw = bytes(count * _itemsize(t))


def m_rank_huge(t: pb.Tensor, r: random.Random) -> None:
    count = int(np.prod(list(t.shape), dtype=np.int64)) if t.shape else 1
    rank = r.choice([33, 64, 65, 100, 1000, 10_000])
    _set_shape(t, [count] + [1] * (rank - 1))


def m_rank_off(t: pb.Tensor, r: random.Random) -> None:
    """One axis more or fewer, same element count (the bytes still match)."""
    shape = list(t.shape)
    if shape and r.random() < 0.5:
        last = shape.pop()
        if shape:
            shape[-1] *= last
    else:
        shape.insert(r.randrange(len(shape) + 1), 1)
    _set_shape(t, shape)


def m_scalar(t: pb.Tensor, r: random.Random) -> None:
    _set_shape(t, [])
    t.raw = bytes(_itemsize(t))


def m_raw_off_by_one(t: pb.Tensor, r: random.Random) -> None:
    t.raw = t.raw + b"\x00" if r.random() < 0.5 or not t.raw else t.raw[:-1]


def m_raw_empty(t: pb.Tensor, r: random.Random) -> None:
    t.raw = b""


def m_raw_garbage(t: pb.Tensor, r: random.Random) -> None:
    """Same length, random bytes: NaNs, infinities, denormals and huge numbers."""
    t.raw = r.randbytes(len(t.raw))


def m_float_values(t: pb.Tensor, r: random.Random) -> None:
    """Packed floats instead of raw bytes: right count, or off by one, or with a NaN."""
    count = len(t.raw) // 4 if t.dtype == pb.FLOAT32 else len(t.raw) // _itemsize(t)
    values = [r.gauss(0, 1) for _ in range(count)]
    choice = r.random()
    if choice < 0.3:
        values.append(1.0)
    elif choice < 0.5 and values:
        values.pop()
    elif choice < 0.7 and values:
        values[r.randrange(len(values))] = r.choice(NONFINITE)
    t.float_values.values[:] = values


def m_nonfinite(t: pb.Tensor, r: random.Random) -> None:
    if t.dtype != pb.FLOAT32 or len(t.raw) < 4:
        return
    values = np.frombuffer(t.raw[: len(t.raw) // 4 * 4], "<f4").copy()
    for _ in range(r.randint(1, 3)):
        values[r.randrange(len(values))] = r.choice(NONFINITE)
    t.raw = values.tobytes()


def m_no_data(t: pb.Tensor, r: random.Random) -> None:
    t.ClearField("data")


def m_long(t: pb.Tensor, r: random.Random) -> None:
    """Many rows along the first non-batch axis: long sequences, or wide batches of vectors."""
    shape = [d if 1 <= d <= 64 else 1 for d in t.shape] or [1]
    axis = 1 if len(shape) == 3 else 0
    shape[axis] = r.choice([257, 2000, 20_000])
    if int(np.prod(shape)) * 4 > 2_000_000:
        shape[axis] = 2_000_000 // 4 // max(1, int(np.prod(shape)) // shape[axis])
    _set_shape(t, shape)
    t.dtype = pb.FLOAT32
    t.raw = bytes(int(np.prod(shape)) * 4)


def string_values(count: int, r: random.Random) -> list[bytes]:
    """Valid text mostly; sometimes one element of invalid UTF-8, or one past the size bound."""
    values = [r.choice(TEXTS) for _ in range(count)]
    choice = r.random()
    if values and choice < 0.3:
        values[r.randrange(count)] = r.choice(BAD_UTF8)
    elif values and choice < 0.4:
        values[r.randrange(count)] = b"x" * r.choice(OVERSIZE)
    return values


def m_strings(t: pb.Tensor, r: random.Random) -> None:
    """Text where the model takes numbers: STRING with its elements (the shape's count, or one
    off), or string_values under a numeric dtype, or raw bytes under STRING. At most 4096
    elements (a longer shape is cut to one axis of that many)."""
    if r.random() < 0.15:
        t.dtype = pb.STRING  # and the raw bytes as they were
        return
    shape = [max(0, min(d, 64)) for d in t.shape]
    count = int(np.prod(shape)) if shape else 1
    if count > 4096:
        shape, count = [4096], 4096
    _set_shape(t, shape)
    if r.random() < 0.8:
        t.dtype = pb.STRING
    t.string_values.values[:] = string_values(max(0, count + r.choice([0, 0, 0, -1, 1])), r)


TensorMutation = Callable[[pb.Tensor, random.Random], None]
TENSOR_MUTATIONS: list[TensorMutation] = [
    m_dtype_undefined, m_dtype_other, m_dim_huge, m_dim_negative, m_dim_zero, m_shape_wraps,
    m_rank_huge, m_rank_off, m_scalar, m_raw_off_by_one, m_raw_empty, m_raw_garbage,
    m_float_values, m_nonfinite, m_no_data, m_long, m_strings,
]  # fmt: skip


def mutate_tensor(t: pb.Tensor, r: random.Random, tags: list[str]) -> None:
    for _ in range(_count(r)):
        mutation = r.choice(TENSOR_MUTATIONS)
        mutation(t, r)
        tags.append(mutation.__name__[2:])


def _count(r: random.Random) -> int:
    """1 mutation mostly, sometimes 2 or 3."""
    return 1 + (r.random() < 0.3) + (r.random() < 0.1)


# -- batches and requests ---------------------------------------------------------------------


def valid_batch(target: Target, rng: np.random.Generator, r: random.Random) -> pb.Batch:
    """Dense, or (for sequence models with a free time axis) ragged with lengths."""
    batch = r.choice([1, 1, 2, 3, 8])
    x = target.valid_input(rng, batch)
    if target.is_sequence and target.fixed_steps is None and r.random() < 0.4:
        lengths = [r.randint(1, target.steps) for _ in range(batch)]
        flat = np.concatenate([x[i, :n] for i, n in enumerate(lengths)])
        return pb.Batch(values=to_tensor(flat), lengths=lengths)
    return pb.Batch(values=to_tensor(x))


def _ragged(batch: pb.Batch) -> int:
    """Make the batch ragged ([rows, features...]) if it is not; its row count."""
    shape = list(batch.values.shape)
    if len(shape) >= 3:
        _set_shape(batch.values, [shape[0] * shape[1], *shape[2:]])
    return batch.values.shape[0] if batch.values.shape else 0


def _set_lengths(b: pb.Batch, lengths: list[int]) -> None:
    b.lengths[:] = [_int64(n) for n in lengths]


def b_lengths_wrap(b: pb.Batch, r: random.Random) -> None:
    """Lengths whose int64 sum wraps around to the row count (also of an empty tensor)."""
    if r.random() < 0.5:
        features = list(b.values.shape[-1:]) or [1]
        _set_shape(b.values, [0, *features])
        b.values.raw = b""
    rows = _ragged(b)
    _set_lengths(b, r.choice([[INT64_MAX, INT64_MAX, rows + 2], [INT64_MIN, INT64_MIN, rows]]))


def b_lengths_negative(b: pb.Batch, r: random.Random) -> None:
    """A negative length beside one that makes the sum right (where int64 holds it)."""
    rows = _ragged(b)
    negative = r.choice(NEGATIVE)
    _set_lengths(b, [negative, rows - negative])


def b_lengths_off(b: pb.Batch, r: random.Random) -> None:
    rows = _ragged(b)
    _set_lengths(b, [max(0, rows + r.choice([-1, 1]))])


def b_lengths_zeros(b: pb.Batch, r: random.Random) -> None:
    rows = _ragged(b)
    _set_lengths(b, [0] * r.choice([1, 1000, 100_000]) + [rows])


def b_lengths_huge(b: pb.Batch, r: random.Random) -> None:
    _ragged(b)
    _set_lengths(b, [r.choice(HUGE_DIMS)])


def b_lengths_on_dense(b: pb.Batch, r: random.Random) -> None:
    """Lengths beside a dense 3-d (or vector) tensor."""
    _set_lengths(b, [r.randint(0, 3) for _ in range(r.randint(1, 4))])


def b_values(b: pb.Batch, r: random.Random) -> None:
    mutate_tensor(b.values, r, [])


BatchMutation = Callable[[pb.Batch, random.Random], None]
BATCH_MUTATIONS: list[BatchMutation] = [
    b_lengths_wrap, b_lengths_negative, b_lengths_off, b_lengths_zeros, b_lengths_huge,
    b_lengths_on_dense,
]  # fmt: skip


def mutate_name(r: random.Random, targets: list[Target]) -> str:
    """An unknown, empty, huge or odd name, or another model's (whose input does not fit)."""
    return r.choice(targets).name if r.random() < 0.4 else r.choice(NAMES)


def predict_request(r: random.Random, targets: list[Target], tags: list[str]) -> pb.PredictRequest:
    """A valid request for one model, then mutations of its fields."""
    target = r.choice(targets)
    rng = np.random.default_rng(r.getrandbits(32))
    request = pb.PredictRequest(
        model_name=target.name,
        top_k=r.randint(0, target.labels) if target.labels and r.random() < 0.3 else 0,
    )
    if target.named:
        for name, x in target.valid_named(rng, r.choice([1, 1, 2, 3])).items():
            request.named_inputs[name].values.CopyFrom(to_tensor(x))
    else:
        request.inputs.CopyFrom(valid_batch(target, rng, r))
    if r.random() < 0.1:
        tags.append("valid")
        return request
    for _ in range(_count(r)):
        roll = r.random()
        # a model with several inputs: one of its named batches
        batch = r.choice(list(request.named_inputs.values()) or [request.inputs])
        if roll < 0.5:
            mutate_tensor(batch.values, r, tags)
            continue
        if roll < 0.7:
            mutation = r.choice(BATCH_MUTATIONS)
            mutation(batch, r)
            tags.append(mutation.__name__[2:])
        elif roll < 0.8:
            request.top_k = r.choice(TOP_KS)
            tags.append("top_k")
        elif roll < 0.88:
            request.model_name = mutate_name(r, targets)
            tags.append("model_name")
        elif roll < 0.92:
            request.model_version = r.choice(VERSIONS)
            tags.append("model_version")
        elif roll < 0.97:
            how = several_inputs(request, target, r) if target.named else named_inputs(request, r)
            tags.append("named_inputs_" + how)
        else:
            request.ClearField("inputs")
            tags.append("no_inputs")
    return request


def named_inputs(request: pb.PredictRequest, r: random.Random) -> str:
    """The batch sent as `named_inputs`: under the single input's name, an unknown or empty
    name, beside an extra input, or in both fields at once; which one it was."""
    batch = pb.Batch()
    batch.CopyFrom(request.inputs)
    how = r.choice(["input", "unknown", "extra", "both"])
    if how != "both":
        request.ClearField("inputs")
    name = r.choice([*NAMES, "inputs"]) if how == "unknown" else "input"
    request.named_inputs[name].CopyFrom(batch)
    if how == "extra":
        request.named_inputs["extra"].CopyFrom(batch)
    return how


def several_inputs(request: pb.PredictRequest, target: Target, r: random.Random) -> str:
    """A several-input model's named batches made wrong: one missing, an unknown one beside
    them, one with fewer items, one in `inputs` as well, or all in `inputs`; which one."""
    named = request.named_inputs
    how = r.choice(["missing", "unknown", "fewer", "both", "unnamed"])
    name = r.choice(sorted(named)) if named else "input"
    if how == "missing" and named:
        del named[name]
    elif how == "unknown":
        named[r.choice(NAMES)].CopyFrom(named[name] if named else pb.Batch())
    elif how == "fewer" and named:
        values = named[name].values
        if values.shape and values.shape[0] > 1:
            count = len(values.raw) // values.shape[0]
            values.shape[0] -= 1
            values.raw = values.raw[: count * values.shape[0]]
        else:
            values.shape[0:0] = [2]  # an item axis more: 2 items where the others have 1
            values.raw += values.raw
    elif how in ("both", "unnamed") and named:
        request.inputs.CopyFrom(named[name])
        if how == "unnamed":
            request.ClearField("named_inputs")
    return how


# -- sessions ---------------------------------------------------------------------------------


def session_messages(
    r: random.Random, targets: list[Target], tags: list[str]
) -> list[pb.SessionRequest]:
    """Open (valid or not, or missing; static inputs in `named_inputs`), then steps (in
    `values` or `named_values`), resets (new static inputs or none) and end_input in any
    order."""
    with_sessions = [t for t in targets if t.sessions]
    target = r.choice(with_sessions if with_sessions and r.random() < 0.85 else targets)
    rng = np.random.default_rng(r.getrandbits(32))
    messages: list[pb.SessionRequest] = []
    if r.random() < 0.9:
        messages.append(_session_open(target, r, rng, tags))
    else:
        tags.append("no_open")
    for _ in range(r.choice([0, 1, 2, 3, 5, 8])):
        kind = r.choices(
            ["steps", "bad_steps", "named_steps", "huge_steps", "reset", "end_input", "empty",
             "open"],
            [40, 20, 12, 3, 10, 10, 4, 4],
        )[0]  # fmt: skip
        messages.append(_session_event(kind, target, r, rng, tags))
    return messages


def _session_open(
    target: Target, r: random.Random, rng: np.random.Generator, tags: list[str]
) -> pb.SessionRequest:
    """An open: a model's static inputs in `named_inputs` (valid mostly, else made wrong); now
    and then static inputs for a model that has none."""
    opening = pb.SessionOpen(model_name=target.name, emit_on_request=r.random() < 0.3)
    roll = r.random()
    if roll < 0.1:
        opening.model_name = mutate_name(r, [target])
        tags.append("open.model_name")
    elif roll < 0.15:
        opening.model_version = r.choice(VERSIONS)
        tags.append("open.model_version")
    elif roll < 0.25:
        opening.top_k = r.choice(TOP_KS)
        tags.append("open.top_k")
    if target.statics or r.random() < 0.1:
        valid = r.random() < (0.7 if target.statics else 0.0)
        _fill(opening.named_inputs, named_statics(target, r, rng, tags, "open", valid))
    return pb.SessionRequest(open=opening)


def _fill(field: Any, tensors: dict[str, pb.Tensor]) -> None:
    for name, tensor in tensors.items():
        field[name].CopyFrom(tensor)


STATIC_FAULTS = ["missing", "unknown", "sequence", "shape", "batch", "dtype", "nonfinite",
                 "ids", "huge", "tensor", "empty"]  # fmt: skip


def named_statics(
    target: Target,
    r: random.Random,
    rng: np.random.Generator,
    tags: list[str],
    where: str,
    valid: bool,
) -> dict[str, pb.Tensor]:
    """The model's static inputs by name (SessionOpen/SessionReset `named_inputs`): valid (each
    one item, with a batch axis of 1 or without), or one fault made (tagged `where`.fault)."""
    arrays = target.valid_statics(rng)
    if r.random() < 0.3:
        arrays = {n: x[np.newaxis] for n, x in arrays.items()}  # [1, ...] is accepted too
    # (a model without static inputs: only faults that add one)
    faults = STATIC_FAULTS if arrays else ["unknown", "sequence"]
    fault = "valid" if valid else r.choice(faults)
    tags.append(f"{where}.named_inputs.{fault}")
    name = r.choice(sorted(arrays)) if arrays else None
    if fault == "missing" and name:
        del arrays[name]
    elif fault == "unknown":
        arrays[r.choice([*NAMES, "input", "static"])] = target.valid_steps(rng, 1)
    elif fault == "sequence":  # the sequence inputs sent as static ones (or the only input)
        for spec in target.sequences:
            arrays[spec.name] = spec.item(rng, 3)
        if not target.sequences:
            arrays[_single_name(target)] = target.valid_steps(rng, 3)
    elif fault == "shape" and name:
        x = arrays[name]
        arrays[name] = np.resize(x, (*x.shape[:-1], x.shape[-1] + r.choice([-1, 1, 5])))
    elif fault == "batch" and name:  # two items where one is due, or an axis more
        x = arrays[name]
        arrays[name] = np.stack([x, x]) if r.random() < 0.5 else x[np.newaxis, np.newaxis]
    elif fault == "dtype" and name:
        arrays[name] = arrays[name].astype(r.choice([np.float64, np.float16, np.int64, np.int32]))
    elif fault == "nonfinite" and name:
        x = arrays[name].astype(np.float32)
        x.reshape(-1)[r.randrange(x.size)] = r.choice(NONFINITE)
        arrays[name] = x
    elif fault == "ids" and name:  # ids outside the vocabulary (or negative)
        x = arrays[name].astype(np.int32)
        x.reshape(-1)[r.randrange(x.size)] = r.choice([-1, INT32_MIN, INT32_MAX, 10**6])
        arrays[name] = x
    elif fault == "empty":
        arrays = {}
    tensors = {n: to_tensor(x) for n, x in arrays.items()}
    if fault == "huge" and name:
        r.choice([m_dim_huge, m_shape_wraps, m_rank_huge, m_long])(tensors[name], r)
    elif fault == "tensor" and name:
        mutate_tensor(tensors[name], r, tags)
    return tensors


STEP_FAULTS = ["unequal", "unknown", "both", "static", "empty", "missing", "unnamed", "tensor",
               "huge"]  # fmt: skip


def named_steps(
    target: Target, r: random.Random, rng: np.random.Generator, tags: list[str], valid: bool
) -> pb.SessionSteps:
    """New steps in `named_values` (every sequence input's by name; a model with one input
    takes it under its name): valid, or one fault made (tagged steps.named_values.fault)."""
    count = r.choice([1, 1, 2, 3])
    if target.named:
        arrays = target.valid_named_steps(rng, count)
    else:
        arrays = {_single_name(target): target.valid_steps(rng, count)}
    fault = "valid" if valid else r.choice(STEP_FAULTS)
    tags.append(f"steps.named_values.{fault}")
    steps = pb.SessionSteps(emit=r.random() < 0.5)
    name = r.choice(sorted(arrays)) if arrays else None
    if fault == "unequal" and name:
        x = arrays[name]
        arrays[name] = np.concatenate([x, x[:1]]) if r.random() < 0.5 or len(x) < 2 else x[:-1]
    elif fault == "unknown":
        arrays[r.choice([*NAMES, "static", "values"])] = target.valid_steps(rng, count)
    elif fault == "both" and name:
        steps.values.CopyFrom(to_tensor(arrays[name]))
    elif fault == "static":  # a static input among the steps
        statics = target.valid_statics(rng) or {"context": np.ones(3, np.float32)}
        extra = r.choice(sorted(statics))
        arrays[extra] = statics[extra] if r.random() < 0.5 else np.stack([statics[extra]] * count)
    elif fault == "empty":
        arrays = {}
    elif fault == "missing" and name:
        del arrays[name]
    elif fault == "unnamed" and name:  # `values` alone (one of several inputs' steps)
        steps.values.CopyFrom(to_tensor(arrays[name]))
        arrays = {}
    tensors = {n: to_tensor(x) for n, x in arrays.items()}
    if fault == "tensor" and name and name in tensors:
        mutate_tensor(tensors[name], r, tags)
    elif fault == "huge" and name and name in tensors:
        r.choice([m_dim_huge, m_shape_wraps, m_long])(tensors[name], r)
    _fill(steps.named_values, tensors)
    return steps


def _single_name(target: Target) -> str:
    return target.inputs[0].name if target.inputs else "input"


def _session_event(
    kind: str, target: Target, r: random.Random, rng: np.random.Generator, tags: list[str]
) -> pb.SessionRequest:
    if kind == "reset":
        reset = pb.SessionReset()
        if (target.statics and r.random() < 0.6) or r.random() < 0.05:
            valid = bool(target.statics) and r.random() < 0.5
            _fill(reset.named_inputs, named_statics(target, r, rng, tags, "reset", valid))
        return pb.SessionRequest(reset=reset)
    if kind == "named_steps":
        return pb.SessionRequest(steps=named_steps(target, r, rng, tags, valid=False))
    if target.named and kind in ("steps", "bad_steps"):
        valid = kind == "steps" or r.random() < 0.3
        return pb.SessionRequest(steps=named_steps(target, r, rng, tags, valid))
    if kind == "end_input":
        return pb.SessionRequest(end_input=pb.SessionEndInput())
    if kind == "empty":
        tags.append("empty_message")
        return pb.SessionRequest()
    if kind == "open":
        tags.append("open_again")
        return _session_open(target, r, rng, tags)
    steps = r.choice([1, 1, 2, 3]) if kind != "huge_steps" else r.choice([1000, 20_000])
    if target.named:  # huge steps of every sequence input
        message = pb.SessionRequest(steps=pb.SessionSteps())
        named = target.valid_named_steps(rng, steps)
        _fill(message.steps.named_values, {n: to_tensor(x) for n, x in named.items()})
        tags.append("huge_steps")
        return message
    x = target.valid_steps(rng, steps)
    message = pb.SessionRequest(steps=pb.SessionSteps(values=to_tensor(x), emit=r.random() < 0.5))
    if kind == "bad_steps":
        mutate_tensor(message.steps.values, r, tags)
    elif kind == "huge_steps":
        tags.append("huge_steps")
    return message


# -- the other RPCs ---------------------------------------------------------------------------


def metadata_request(
    r: random.Random, targets: list[Target], tags: list[str]
) -> pb.GetModelMetadataRequest:
    request = pb.GetModelMetadataRequest(model_name=r.choice(targets).name)
    if r.random() < 0.6:
        request.model_name = mutate_name(r, targets)
        tags.append("model_name")
    if r.random() < 0.4:
        request.model_version = r.choice(VERSIONS)
        tags.append("model_version")
    return request


def health_request(
    r: random.Random, targets: list[Target], tags: list[str]
) -> health_pb2.HealthCheckRequest:
    services = ["", "seqserve.v1.SeqServe", "grpc.health.v1.Health", r.choice(targets).name]
    service = r.choice(services) if r.random() < 0.5 else mutate_name(r, targets)
    return health_pb2.HealthCheckRequest(service=service)


# -- cases ------------------------------------------------------------------------------------

RPC_WEIGHTS = {
    "Predict": 35, "PredictStream": 20, "Session": 25, "GetModelMetadata": 8, "ListModels": 4,
    "Health": 8,
}  # fmt: skip


def make_case(seed: int, index: int, targets: list[Target]) -> Case:
    """Case `index` of run `seed`: the same arguments give the same case."""
    r = random.Random(f"{seed}:{index}")
    rpc = r.choices(list(RPC_WEIGHTS), list(RPC_WEIGHTS.values()))[0]
    tags: list[str] = []
    request_type: type[Message]
    if rpc in ("Predict", "PredictStream"):
        messages: list[Message] = [predict_request(r, targets, tags)]
        request_type, method = pb.PredictRequest, SEQSERVE + rpc
        shape = "unary" if rpc == "Predict" else "server_stream"
    elif rpc == "Session":
        messages = list(session_messages(r, targets, tags))
        request_type, method, shape = pb.SessionRequest, SEQSERVE + rpc, "bidi"
    elif rpc == "GetModelMetadata":
        messages = [metadata_request(r, targets, tags)]
        request_type, method, shape = pb.GetModelMetadataRequest, SEQSERVE + rpc, "unary"
    elif rpc == "ListModels":
        messages = [pb.ListModelsRequest()]
        request_type, method, shape = pb.ListModelsRequest, SEQSERVE + rpc, "unary"
    else:
        messages = [health_request(r, targets, tags)]
        watch = r.random() < 0.2
        request_type = health_pb2.HealthCheckRequest
        method = HEALTH + ("Watch" if watch else "Check")
        shape = "server_stream" if watch else "unary"
        tags.append("watch" if watch else "check")
    encoded = [m.SerializeToString() for m in messages]
    case = Case(rpc, method, shape, encoded, tags=tags, request_type=request_type)
    if encoded and r.random() < 0.05:
        _mangle_bytes(case, r, request_type)
    return case


def _mangle_bytes(case: Case, r: random.Random, request_type: type[Message]) -> None:
    """Flip, cut or extend one message's bytes; record whether every message still parses."""
    i = r.randrange(len(case.messages))
    data = bytearray(case.messages[i])
    roll = r.random()
    if roll < 0.4 and data:
        for _ in range(r.randint(1, 4)):
            data[r.randrange(len(data))] ^= 1 << r.randrange(8)
        case.tags.append("bytes_flipped")
    elif roll < 0.7 and data:
        del data[r.randrange(len(data)) :]
        case.tags.append("bytes_cut")
    else:
        data += r.randbytes(r.randint(1, 32))
        case.tags.append("bytes_appended")
    case.messages[i] = bytes(data)
    case.parses = all(_parses(m, request_type) for m in case.messages)


def _parses(data: bytes, request_type: type[Message]) -> bool:
    try:
        request_type.FromString(data)
    except DecodeError:
        return False
    return True
