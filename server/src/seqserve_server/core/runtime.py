"""One loaded Keras model: safe loading, signature checks, a proven compiled path, warm-up.

Inference goes through a `tf.function` with dynamic batch (and, where the model allows, time)
axes: on a small CPU a `model.predict` call costs ~50 ms of fixed overhead, the compiled function
about 1 ms. A compiled path is used only after it computed what the eager model computes on the
probe set of proof.py; paths are tried in order (see `PATHS`) and a model none of them serves
exactly fails to load, naming the probe.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .batch import Batch
from .errors import InvalidInput, ModelLoadError
from .graph import GraphError, graph_of, run_graph
from .modes import Mode, resolve_mode
from .proof import InputKind, ProofFailed, Reference, probes, prove

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf

ACCEPTED_FLOATS = (np.float16, np.float32, np.float64)
ACCEPTED_IDS = (np.int32, np.int64)
PER_LENGTH_CACHE = 64  # per-length path: compiled functions kept, least recently used dropped
# Each model has its own tf.function, traced once: TF's "retracing" warning counts them all.
tf.get_logger().setLevel("ERROR")


@dataclass(frozen=True)
class Signature:
    """Shapes without the batch axis; None marks a dynamic axis. `tokens`: the input is a
    sequence of integer ids ([steps], no feature axis); `vocabulary`: ids must lie in
    [0, vocabulary) (the input_dim of the Embedding the ids feed), None when unchecked."""

    input_shape: tuple[int | None, ...]
    output_shape: tuple[int | None, ...]
    input_dtype: np.dtype
    output_dtype: np.dtype
    tokens: bool = False
    vocabulary: int | None = None
    # Several outputs: their names and widths. They are computed packed along the feature axis
    # (`output_shape` is the packed shape), so batching, the proof and streams see one array.
    output_names: tuple[str, ...] = ()
    output_widths: tuple[int, ...] = ()

    @property
    def several_outputs(self) -> bool:
        return len(self.output_names) > 1

    def split(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """Packed outputs (feature axis last) by output name."""
        ends = np.cumsum(self.output_widths)[:-1]
        return dict(zip(self.output_names, np.split(values, ends, axis=-1), strict=True))

    @property
    def features(self) -> int | None:
        return None if self.tokens else self.input_shape[-1]

    @property
    def fixed_steps(self) -> int | None:
        """The input length a fixed-length sequence model requires, else None."""
        return self.input_shape[0] if len(self.input_shape) == (1 if self.tokens else 2) else None


Compute = Callable[[np.ndarray], np.ndarray]
Where = Callable[[tuple[np.intp, ...]], str]  # an index into the values -> a position for humans


class ModelRuntime:
    """A model ready to compute: validated inputs in, numpy outputs out."""

    def __init__(
        self,
        model: keras.Model,
        mode: Mode,
        signature: Signature,
        max_sequence_length: int = 0,
    ) -> None:
        self.model = model
        self.mode = mode
        self.signature = signature
        self.max_sequence_length = max_sequence_length
        self.input_kind = InputKind(
            signature.input_shape, signature.input_dtype, mode.takes_sequence, signature.vocabulary
        )
        self.reference = Reference(
            lambda x: keras.ops.convert_to_numpy(self._packed(model(x, training=False)))
        )
        self.compute_path, self.proof = self._proven_path()

    @classmethod
    def load(
        cls, path: Path, stated_mode: Mode | None = None, max_sequence_length: int = 0
    ) -> ModelRuntime:
        """Load with safe_mode (a Lambda layer can run any code), check, prove, warm up."""
        model = _load_keras(path)
        signature = _signature(model)
        vocabulary = _vocabulary(model)
        mode = resolve_mode(
            stated_mode, signature.input_shape, signature.output_shape,
            _sequence_input(signature, vocabulary is not None),
        )  # fmt: skip
        if mode.takes_sequence and len(signature.input_shape) == 1:
            signature = replace(signature, tokens=True, vocabulary=vocabulary)
        runtime = cls(model, mode, signature, max_sequence_length)
        runtime.warm_up()
        return runtime

    # -- the proven compiled path ----------------------------------------------------------

    def _proven_path(self) -> tuple[str, str]:
        """The first path of `PATHS` that matches Keras on every probe; its name and proof."""
        cases = probes(self.input_kind)
        failures = []
        for name, build in PATHS:
            try:
                fn = build(self)
            except (GraphError, ProofFailed) as exc:
                failures.append(f"{name}: {exc}")
                continue
            try:
                prove(fn, cases, self.reference)
            except ProofFailed as exc:
                failures.append(f"{name}: {exc}")
                continue
            self._fn = fn
            shown = ", ".join(sorted({p.name for p in cases}))
            proof = f"{name} path equals Keras on probes {shown}"
            if failures:
                proof += " (after " + "; ".join(failures) + ")"
            return name, proof
        why = "; ".join(failures)
        raise ModelLoadError(f"no compiled path computes what Keras computes: {why}")

    def _packed(self, outputs: object) -> tf.Tensor:
        """One tensor: the output, or several outputs (list or dict) packed by feature axis."""
        if not self.signature.several_outputs:
            return outputs
        if isinstance(outputs, dict):
            outputs = [outputs[name] for name in self.signature.output_names]
        return tf.concat(list(outputs), axis=-1)  # type: ignore[call-overload]

    def _call(self, x: tf.Tensor) -> tf.Tensor:
        return self._packed(self.model(x, training=False))

    def _spec(self, steps: int | None = None) -> tf.TensorSpec:
        shape = list(self.signature.input_shape)
        if steps is not None:
            shape[0] = steps
        return tf.TensorSpec([None, *shape], self.signature.input_dtype)

    def _traced(self) -> Compute:
        """Keras' own call traced once with dynamic batch and time axes."""
        fn = tf.function(self._call, input_signature=[self._spec()])
        # Calling the concrete function skips tf.function's dispatch: ~0.7 vs ~1.2 ms at batch 1.
        return _numpy_fn(fn.get_concrete_function())

    def _graph(self) -> Compute:
        """The functional graph run node by node (graph.py replaces wrong graph-mode layers)."""
        graph = graph_of(self.model)
        if self.signature.several_outputs:
            raise GraphError("the node-by-node path runs single-output models")
        fn = tf.function(lambda x: run_graph(graph, x), input_signature=[self._spec()])
        return _numpy_fn(fn.get_concrete_function())

    def _per_length(self) -> Compute:
        """One function per input length (static time axis), least recently used dropped."""
        if self.signature.input_shape[0] is not None or not self.mode.takes_sequence:
            raise ProofFailed("the time axis is already static")
        return _PerLength(self._call, self._spec)

    # -- checks ----------------------------------------------------------------------------

    def validate(self, batch: Batch) -> Batch:
        """Check a decoded batch against the signature and limits; return it as the model dtype."""
        self._check_layout(batch)
        values = self.check_values(batch.values, "inputs.values", lambda at: _where(batch, at))
        if self.mode.takes_sequence:
            self._check_lengths(batch.item_lengths())
        return Batch(values, batch.lengths)

    def check_values(self, values: np.ndarray, field: str, where: Where) -> np.ndarray:
        """The values as the model's dtype: token ids inside the vocabulary, or finite floats.
        The one value check of request inputs (Predict's and sessions' steps); `where` names the
        position of a bad value."""
        dtype = self.signature.input_dtype
        if np.issubdtype(dtype, np.integer):
            ids = _as_ids(values, dtype, field)
            _check_vocabulary(ids, self.signature.vocabulary, field, where)
            return ids
        floats = _as_model_dtype(values, dtype, field)
        _check_finite(floats, field, where)
        return floats

    def _check_layout(self, batch: Batch) -> None:
        sig = self.signature
        if batch.size == 0:
            raise InvalidInput("inputs", "at least one input", "an empty batch")
        if sig.tokens:
            want_rank = 1 if batch.is_ragged else 2
            layout = "[total_steps] token ids" if batch.is_ragged else "[batch, steps] token ids"
        elif self.mode.takes_sequence:
            want_rank = 2 if batch.is_ragged else 3
            layout = "[total_steps, features]" if batch.is_ragged else "[batch, steps, features]"
        else:
            if batch.is_ragged:
                raise InvalidInput(
                    "inputs.lengths", "none (this model takes vectors)", f"{batch.size} lengths"
                )
            want_rank, layout = 2, "[batch, features]"
        if batch.values.ndim != want_rank:
            raise InvalidInput(
                "inputs.values.shape", f"rank {want_rank} {layout}", str(list(batch.values.shape))
            )
        if sig.features is not None and batch.values.shape[-1] != sig.features:
            raise InvalidInput(
                "inputs.values.shape", f"{sig.features} features", f"{batch.values.shape[-1]}"
            )

    def _check_lengths(self, lengths: np.ndarray) -> None:
        for i, length in enumerate(lengths.tolist()):
            field = f"inputs.lengths[{i}]"
            if length <= 0:
                raise InvalidInput(field, "a sequence of at least 1 step", f"{length} steps")
            fixed = self.signature.fixed_steps
            if fixed is not None and length != fixed:
                raise InvalidInput(
                    field, f"exactly {fixed} steps (fixed-length model)", str(length)
                )
            limit = self.max_sequence_length
            if limit and length > limit:
                raise InvalidInput(
                    field, f"at most {limit} steps (max_sequence_length)", f"{length} steps"
                )

    # -- compute ---------------------------------------------------------------------------

    def compute(self, values: np.ndarray) -> np.ndarray:
        """Run the proven compiled path on a dense, validated batch."""
        return self._fn(values)

    def warm_up(self) -> float:
        """Trace and run once so that the first request does not pay for it; seconds taken."""
        start = time.perf_counter()
        steps = self.signature.fixed_steps or 2
        shape = (1, *(steps if d is None else d for d in self.signature.input_shape))
        self.compute(np.zeros(shape, dtype=self.signature.input_dtype))
        return time.perf_counter() - start


def _numpy_fn(concrete: Callable[[tf.Tensor], tf.Tensor]) -> Compute:
    return lambda values: concrete(tf.constant(values)).numpy()


class _PerLength:
    """Concrete functions keyed by input length, the `PER_LENGTH_CACHE` most recent kept."""

    def __init__(
        self, call: Callable[[tf.Tensor], tf.Tensor], spec: Callable[[int | None], tf.TensorSpec]
    ) -> None:
        self._call = call
        self._spec = spec
        self._fns: OrderedDict[int, Callable[[tf.Tensor], tf.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, values: np.ndarray) -> np.ndarray:
        return self._function(int(values.shape[1]))(tf.constant(values)).numpy()

    def _function(self, steps: int) -> Callable[[tf.Tensor], tf.Tensor]:
        with self._lock:
            fn = self._fns.get(steps)
            if fn is not None:
                self._fns.move_to_end(steps)
                return fn
        fn = tf.function(self._call, [self._spec(steps)]).get_concrete_function()
        with self._lock:
            self._fns[steps] = fn
            while len(self._fns) > PER_LENGTH_CACHE:
                self._fns.popitem(last=False)
        return fn


# Compiled paths in order of preference: Keras' own traced call, the graph node by node, then
# a function per input length (exact wherever static shapes are, but it traces in the request
# path at each new length).
PATHS: tuple[tuple[str, Callable[[ModelRuntime], Compute]], ...] = (
    ("traced", ModelRuntime._traced),
    ("graph", ModelRuntime._graph),
    ("per_length", ModelRuntime._per_length),
)


def _load_keras(path: Path) -> keras.Model:
    if not path.is_file():
        raise ModelLoadError(f"no model file at {path}")
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # keras raises many types for corrupt or unsafe files
        raise ModelLoadError(f"cannot load {path.name}: {type(exc).__name__}: {exc}") from exc
    if len(model.inputs) != 1:
        raise ModelLoadError(
            f"seqserve serves models with one input; this one has {len(model.inputs)} inputs"
        )
    return model


def _signature(model: keras.Model) -> Signature:
    inp, outs = model.inputs[0], list(model.outputs)
    shapes = [tuple(out.shape[1:]) for out in outs]
    dtypes = {np.dtype(keras.backend.standardize_dtype(out.dtype)) for out in outs}
    signature = Signature(
        input_shape=tuple(inp.shape[1:]),
        output_shape=shapes[0],
        input_dtype=np.dtype(keras.backend.standardize_dtype(inp.dtype)),
        output_dtype=dtypes.pop(),
    )
    if len(outs) == 1:
        return signature
    return _several_outputs(signature, _output_names(model), shapes, dtypes)


def _output_names(model: keras.Model) -> list[str]:
    """Names in the order of `model.outputs`: a dict's keys for dict outputs (what calling the
    model returns), else the output layers' names."""
    structure = model.output
    if not isinstance(structure, dict):
        return list(model.output_names)
    key_of = {id(tensor): key for key, tensor in structure.items()}
    return [key_of[id(tensor)] for tensor in model.outputs]


def _several_outputs(
    signature: Signature,
    names: list[str],
    shapes: list[tuple[int | None, ...]],
    other_dtypes: set[np.dtype],
) -> Signature:
    """Outputs of one kind (all vectors, or all sequences of the input's steps) of one dtype are
    served packed; others are refused with the reason."""
    leading = {shape[:-1] for shape in shapes}
    widths = [shape[-1] for shape in shapes]
    if len(leading) != 1 or other_dtypes or any(w is None for w in widths):
        described = ", ".join(f"{n} {list(s)}" for n, s in zip(names, shapes, strict=True))
        raise ModelLoadError(
            "seqserve serves several outputs when they are all vectors or all sequences, of "
            f"one dtype and a fixed number of features; this model has {described}"
        )
    packed = (*shapes[0][:-1], sum(w for w in widths if w is not None))
    return replace(
        signature,
        output_shape=packed,
        output_names=tuple(names),
        output_widths=tuple(w for w in widths if w is not None),
    )


def _vocabulary(model: keras.Model) -> int | None:
    """The id range of an integer input that feeds Embedding layers: their smallest input_dim."""
    try:
        graph = graph_of(model)
    except GraphError:
        return None
    dims = [
        int(node.operation.input_dim)
        for node in graph.nodes
        if isinstance(node.operation, keras.layers.Embedding)
        and any(kt is graph.input for kt in node.inputs)
    ]
    return min(dims, default=None)


def _sequence_input(signature: Signature, feeds_embedding: bool) -> bool | None:
    """Whether the input is a sequence: (steps, features) is; (n,) of floats is a vector; (n,)
    of integer ids feeding an Embedding is a sequence of tokens; other integers are undecided
    (a config's stated mode settles them)."""
    rank = len(signature.input_shape)
    if rank != 1:
        return rank == 2
    if not np.issubdtype(signature.input_dtype, np.integer):
        return False
    return True if feeds_embedding else None


def _as_ids(values: np.ndarray, dtype: np.dtype, field: str) -> np.ndarray:
    if values.dtype.type not in ACCEPTED_IDS:
        raise InvalidInput(f"{field}.dtype", "integers (int32 or int64)", str(values.dtype))
    if dtype == np.int32 and values.dtype == np.int64:
        low, high = np.iinfo(np.int32).min, np.iinfo(np.int32).max
        if values.size and (values.min() < low or values.max() > high):
            raise InvalidInput(field, "token ids that fit int32", "ids beyond int32")
    return values.astype(dtype, copy=False)


def _check_vocabulary(values: np.ndarray, vocabulary: int | None, field: str, where: Where) -> None:
    if vocabulary is None or not values.size:
        return
    bad = (values < 0) | (values >= vocabulary)
    if not bad.any():
        return
    first = np.unravel_index(int(np.argmax(bad)), bad.shape)
    raise InvalidInput(
        field, f"token ids in [0, {vocabulary}) (the Embedding's input_dim)",
        f"{values[first]} in {where(first)}",
    )  # fmt: skip


def _where(batch: Batch, at: tuple[np.intp, ...]) -> str:
    """`inputs sequence i step j` for ragged batches, `inputs[i, j...]` for dense ones."""
    row = int(at[0])
    if batch.lengths is None:
        return "inputs[" + ", ".join(str(int(i)) for i in at) + "]"
    ends = np.cumsum(batch.lengths)
    seq = int(np.searchsorted(ends, row, side="right"))
    start = int(ends[seq - 1]) if seq else 0
    return f"inputs sequence {seq} step {row - start}"


def _as_model_dtype(values: np.ndarray, dtype: np.dtype, field: str) -> np.ndarray:
    if values.dtype.type not in ACCEPTED_FLOATS:
        raise InvalidInput(f"{field}.dtype", "a floating type (float16/32/64)", str(values.dtype))
    return values.astype(dtype, copy=False)


def _check_finite(values: np.ndarray, field: str, where: Where) -> None:
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    first = np.unravel_index(int(np.argmax(bad)), bad.shape)
    raise InvalidInput(field, "finite numbers", f"{values[first]} in {where(first)}")


def configure_tensorflow(intra_op_threads: int, inter_op_threads: int) -> None:
    """Thread pools must be set before TensorFlow runs its first op (0 keeps TF's choice)."""
    if intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
    if inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
