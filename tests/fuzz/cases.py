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
BAD_DTYPES = [-1, 6, 7, 100, INT32_MAX, INT32_MIN]
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
    t.dtype = r.choice([0, 1, 2, 3, 4, 5])  # type: ignore[assignment]


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


TensorMutation = Callable[[pb.Tensor, random.Random], None]
TENSOR_MUTATIONS: list[TensorMutation] = [
    m_dtype_undefined, m_dtype_other, m_dim_huge, m_dim_negative, m_dim_zero, m_shape_wraps,
    m_rank_huge, m_rank_off, m_scalar, m_raw_off_by_one, m_raw_empty, m_raw_garbage,
    m_float_values, m_nonfinite, m_no_data, m_long,
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
        model_name=target.name, inputs=valid_batch(target, rng, r),
        top_k=r.randint(0, target.labels) if target.labels and r.random() < 0.3 else 0,
    )  # fmt: skip
    if r.random() < 0.1:
        tags.append("valid")
        return request
    for _ in range(_count(r)):
        roll = r.random()
        if roll < 0.5:
            mutate_tensor(request.inputs.values, r, tags)
            continue
        if roll < 0.7:
            mutation = r.choice(BATCH_MUTATIONS)
            mutation(request.inputs, r)
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
            tags.append("named_inputs_" + named_inputs(request, r))
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


# -- sessions ---------------------------------------------------------------------------------


def session_messages(
    r: random.Random, targets: list[Target], tags: list[str]
) -> list[pb.SessionRequest]:
    """Open (valid or not, or missing), then steps, resets and end_input in any order."""
    with_sessions = [t for t in targets if t.sessions]
    target = r.choice(with_sessions if with_sessions and r.random() < 0.85 else targets)
    rng = np.random.default_rng(r.getrandbits(32))
    messages: list[pb.SessionRequest] = []
    if r.random() < 0.9:
        messages.append(_session_open(target, r, tags))
    else:
        tags.append("no_open")
    for _ in range(r.choice([0, 1, 2, 3, 5, 8])):
        kind = r.choices(
            ["steps", "bad_steps", "huge_steps", "reset", "end_input", "empty", "open"],
            [40, 20, 3, 10, 10, 4, 4],
        )[0]
        messages.append(_session_event(kind, target, r, rng, tags))
    return messages


def _session_open(target: Target, r: random.Random, tags: list[str]) -> pb.SessionRequest:
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
    return pb.SessionRequest(open=opening)


def _session_event(
    kind: str, target: Target, r: random.Random, rng: np.random.Generator, tags: list[str]
) -> pb.SessionRequest:
    if kind == "reset":
        return pb.SessionRequest(reset=pb.SessionReset())
    if kind == "end_input":
        return pb.SessionRequest(end_input=pb.SessionEndInput())
    if kind == "empty":
        tags.append("empty_message")
        return pb.SessionRequest()
    if kind == "open":
        tags.append("open_again")
        return _session_open(target, r, tags)
    steps = r.choice([1, 1, 2, 3]) if kind != "huge_steps" else r.choice([1000, 20_000])
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
