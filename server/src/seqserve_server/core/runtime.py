"""One loaded Keras model: safe loading, signature checks, a proven compiled path, warm-up.

Inference goes through a `tf.function` with dynamic batch (and, where the model allows, time)
axes: on a small CPU a `model.predict` call costs ~50 ms of fixed overhead, the compiled function
about 1 ms. A compiled path is used only after it computed what the eager model computes on the
probe set of proof.py; paths are tried in order (see `PATHS`) and a model none of them serves
exactly fails to load, naming the probe.

A model with several inputs takes one array per input (in the model's order) wherever a
single-input model takes one array: in `compute`, the compiled paths and the proof.

Text (signature.py): token strings per step are served like token ids. A whole-text input is
tokenized inside the model, which pads a batch's texts to the longest: so that each text's
answer is the model's on that text alone (Keras' own answer, errors included: an LSTM fed a
text of no tokens fails), every path, the proof's reference included, computes such a model
one item at a time (`_one_at_a_time`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import cast

import numpy as np

from .batch import Batch, NamedBatch
from .errors import InvalidInput, ModelLoadError
from .graph import GraphError, graph_of, run_graph
from .inputs import check_inputs
from .modes import Mode, reconcile_mode, resolve_mode, several_inputs_mode
from .proof import Probe, ProofFailed, Reference, Values, probes, prove, several_probes
from .signature import (
    SINGLE_INPUT_NAME,
    SINGLE_OUTPUT_NAME,
    STRING,
    TEXT_SHAPE,
    InputSpec,
    OutputSpec,
    Signature,
)
from .stepping.keras_internals import producer
from .stepping.numpy_program import numpy_model
from .tf_errors import reason

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf

# Batches of at most this many steps in all (batch x steps) are computed in numpy where the
# model has a proven numpy form. LSTM(64), numpy's time over TensorFlow's (`bench.numpy_cost`,
# quiet machine): batch 1 x 8 steps 0.25, 8 x 8 0.5, 32 x 8 0.7, 1 x 128 0.4. Numpy keeps
# winning on larger batches (0.6-0.8), but its loop holds the GIL (the event loop's) for its
# whole length where TensorFlow releases it, and on a noisy machine 16 x 16 and 4 x 64 have
# also measured 1.1-1.25: the bound stays where the gain is large and the hold short.
NUMPY_MAX_CELLS = 128
PER_LENGTH_CACHE = 64  # per-length path: compiled functions kept, least recently used dropped
# Each model has its own tf.function, traced once: TF's "retracing" warning counts them all.
tf.get_logger().setLevel("ERROR")
log = logging.getLogger(__name__)


Compute = Callable[[Values], np.ndarray]


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
        eager: Compute = lambda x: keras.ops.convert_to_numpy(self._call(*_arrays(x)))  # noqa: E731
        self._alone = bool(signature.text_inputs)
        self.reference = Reference(_one_at_a_time(eager) if self._alone else eager)
        self.compute_path, self.proof = self._proven_path()
        self._small = self._proven_numpy()

    @classmethod
    def load(
        cls, path: Path, stated_mode: Mode | None = None, max_sequence_length: int = 0
    ) -> ModelRuntime:
        """Load with safe_mode (a Lambda layer can run any code), check, prove, warm up."""
        model = _load_keras(path)
        outputs = _output_specs(model)
        if len(model.inputs) > 1:
            signature, mode = _several_inputs(model, outputs, stated_mode)
        else:
            signature, mode = _one_input(model, outputs, stated_mode)
        runtime = cls(model, mode, signature, max_sequence_length)
        runtime.warm_up()
        return runtime

    # -- the proven compiled path ----------------------------------------------------------

    def probes(self) -> list[Probe]:
        """The probe set every compiled path of this model is proven on (proof.py)."""
        sig = self.signature
        if sig.several_inputs:
            return several_probes([s.kind for s in sig.inputs], sig.equal_lengths)
        return probes(sig.inputs[0].kind)

    def _proven_path(self) -> tuple[str, str]:
        """The first path of `PATHS` that matches Keras on every probe; its name and proof."""
        cases = self.probes()
        failures = []
        for name, build in PATHS:
            try:
                fn = build(self)
                fn = _one_at_a_time(fn) if self._alone else fn
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

    def _proven_numpy(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """The model in numpy (`numpy_model`) where it has that form and equals Keras on the
        same probes: it serves small batches (`NUMPY_MAX_CELLS`), where TensorFlow's fixed
        cost per call dominates. None (the proven path serves every batch)
        otherwise."""
        sig = self.signature
        if sig.several_inputs or sig.several_outputs:
            return None
        try:
            fn = numpy_model(self.model, self.mode)
            prove(cast(Compute, fn), self.probes(), self.reference)
        except Exception as exc:  # noqa: BLE001 - an optional fast path: any failure drops it
            log.info("no numpy path: %s", f"{type(exc).__name__}: {exc}"[:300])
            return None
        self.proof += f"; batches of up to {NUMPY_MAX_CELLS} steps in all computed in numpy, "
        self.proof += "equal to Keras on the same probes"
        return fn

    def _packed(self, outputs: object) -> tf.Tensor:
        """One tensor: the output, or several outputs (list or dict) packed by feature axis;
        a string output without a feature axis gets one (`_output_specs`)."""
        specs = self.signature.outputs
        if isinstance(outputs, dict):
            outputs = [outputs[name] for name in self.signature.output_names]
        listed: list[tf.Tensor] = list(outputs) if isinstance(outputs, list | tuple) else [outputs]
        shaped = [
            tf.expand_dims(t, -1) if len(t.shape) == len(spec.shape) else t
            for t, spec in zip(listed, specs, strict=True)
        ]
        return shaped[0] if len(shaped) == 1 else tf.concat(shaped, axis=-1)

    def _call(self, *xs: tf.Tensor) -> tf.Tensor:
        return self._packed(self.model(self._model_inputs(xs), training=False))

    def _model_inputs(self, xs: tuple[tf.Tensor, ...]) -> object:
        """The structure the model is called with: its one input, or a dict (models built
        with a dict of inputs) or list of several; whole texts ([batch, 1]) in the model's own
        shape."""
        if self._alone:  # as tensors all (Keras refuses a mix of tensors and arrays)
            xs = tuple(
                tf.reshape(x, [-1, *spec.shape]) if spec.text else tf.convert_to_tensor(x)
                for spec, x in zip(self.signature.inputs, xs, strict=True)
            )
        if len(xs) == 1:
            return xs[0]
        if isinstance(self.model.input, dict):
            return {spec.name: x for spec, x in zip(self.signature.inputs, xs, strict=True)}
        return list(xs)

    def _specs(self, steps: tuple[int | None, ...] | None = None) -> list[tf.TensorSpec]:
        """One TensorSpec per input; `steps` makes dynamic time axes static."""
        out = []
        for i, spec in enumerate(self.signature.inputs):
            shape = list(TEXT_SHAPE if spec.text else spec.shape)
            if steps is not None and steps[i] is not None:
                shape[0] = steps[i]
            out.append(tf.TensorSpec([None, *shape], tf.as_dtype(spec.dtype)))
        return out

    def _traced(self) -> Compute:
        """Keras' own call traced once with dynamic batch and time axes."""
        fn = tf.function(self._call, input_signature=self._specs())
        # Calling the concrete function skips tf.function's dispatch: ~0.7 vs ~1.2 ms at batch 1.
        return _numpy_fn(fn.get_concrete_function())

    def _graph(self) -> Compute:
        """The functional graph run node by node (graph.py replaces wrong graph-mode layers)."""
        graph = graph_of(self.model, several_inputs=True)
        if self.signature.several_outputs:
            raise GraphError("the node-by-node path runs single-output models")
        fn = tf.function(lambda *xs: run_graph(graph, *xs), input_signature=self._specs())
        return _numpy_fn(fn.get_concrete_function())

    def _per_length(self) -> Compute:
        """One function per input length (static time axes), least recently used dropped."""
        dynamic = tuple(s.sequence and s.shape[0] is None for s in self.signature.inputs)
        if not any(dynamic):
            raise ProofFailed("the time axis is already static")
        return _PerLength(self._call, self._specs, dynamic)

    # -- checks ----------------------------------------------------------------------------

    def validate(self, inputs: Batch | dict[str, Batch]) -> Batch | NamedBatch:
        """Check decoded inputs (one batch, or batches by input name) against the signature and
        limits; return them as the model's dtypes (inputs.py)."""
        sig = self.signature
        return check_inputs(
            inputs, sig.inputs, sig.several_inputs, sig.equal_lengths,
            self.max_sequence_length,
        )  # fmt: skip

    def output_lengths(self, batch: Batch | NamedBatch) -> list[int]:
        """Per item, the steps its output has if it is as long as an input (the input the
        output follows; 1 for vectors): what PredictStream's message limit counts."""
        if isinstance(batch, Batch):
            takes = self.mode.takes_sequence
            return batch.item_lengths().tolist() if takes else [1] * batch.size
        sequences = [s.name for s in self.signature.sequence_inputs]
        name = self.signature.output_follows or (sequences[0] if sequences else None)
        if name is None:
            return [1] * batch.size
        return batch.batches[name].item_lengths().tolist()

    # -- compute ---------------------------------------------------------------------------

    def compute(self, values: Values) -> np.ndarray:
        """Run the proven compiled path on a dense, validated batch (one array per input for
        several inputs)."""
        small = self._small
        if small is not None and isinstance(values, np.ndarray) and _small_enough(values):
            return small(values)
        return self._fn(values)

    def warm_up(self) -> float:
        """Trace and run once so that the first request does not pay for it; seconds taken."""
        start = time.perf_counter()
        zeros = tuple(_zeros(spec, 2) for spec in self.signature.inputs)
        self.compute(zeros if len(zeros) > 1 else zeros[0])
        self._fn(zeros if len(zeros) > 1 else zeros[0])
        return time.perf_counter() - start


def _one_at_a_time(fn: Compute) -> Compute:
    """`fn` on each item of a batch alone, the answers stacked (whole-text models)."""

    def each(values: Values) -> np.ndarray:
        arrays = _arrays(values)
        rows = []
        for i in range(len(arrays[0])):
            item = tuple(a[i : i + 1] for a in arrays)
            try:
                rows.append(np.asarray(fn(item if len(item) > 1 else item[0])))
            except tf.errors.InvalidArgumentError as exc:
                raise InvalidInput(
                    f"inputs[{i}]", "a text the model can compute",
                    f"{reason(exc)} (Keras fails on this text too; a recurrent layer fed a text "
                    "of no tokens does)",
                ) from exc  # fmt: skip
        return np.concatenate(rows)

    return each


def _small_enough(x: np.ndarray) -> bool:
    """At most `NUMPY_MAX_CELLS` steps in all (batch x steps)."""
    return x.shape[0] * x.shape[1] <= NUMPY_MAX_CELLS


def _arrays(values: Values) -> tuple[np.ndarray, ...]:
    return values if isinstance(values, tuple) else (values,)


def _numpy_fn(concrete: Callable[..., tf.Tensor]) -> Compute:
    return lambda values: concrete(*(tf.constant(v) for v in _arrays(values))).numpy()


class _PerLength:
    """Concrete functions keyed by the inputs' lengths, the `PER_LENGTH_CACHE` most recent kept."""

    def __init__(
        self,
        call: Callable[..., tf.Tensor],
        specs: Callable[[tuple[int | None, ...]], list[tf.TensorSpec]],
        dynamic: tuple[bool, ...],
    ) -> None:
        self._call = call
        self._specs = specs
        self._dynamic = dynamic  # per input: a sequence with a dynamic time axis
        self._fns: OrderedDict[tuple[int | None, ...], Callable[..., tf.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, values: Values) -> np.ndarray:
        arrays = _arrays(values)
        steps = tuple(
            int(a.shape[1]) if dynamic else None
            for a, dynamic in zip(arrays, self._dynamic, strict=True)
        )
        return self._function(steps)(*(tf.constant(a) for a in arrays)).numpy()

    def _function(self, steps: tuple[int | None, ...]) -> Callable[..., tf.Tensor]:
        with self._lock:
            fn = self._fns.get(steps)
            if fn is not None:
                self._fns.move_to_end(steps)
                return fn
        fn = tf.function(self._call, self._specs(steps)).get_concrete_function()
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
    return model


def _output_specs(model: keras.Model) -> tuple[OutputSpec, ...]:
    """Every output by name (a single one is `output`), checked servable (`_several_outputs`)."""
    outs = list(model.outputs)
    names = _output_names(model) if len(outs) > 1 else [SINGLE_OUTPUT_NAME]
    specs = tuple(
        OutputSpec(name, _output_shape(out), _dtype(out))
        for name, out in zip(names, outs, strict=True)
    )
    if len(specs) > 1:
        _check_several_outputs(specs)
    return specs


def _output_shape(out: object) -> tuple[int | None, ...]:
    """An output's shape without the batch axis; strings (a label per item, `[batch]`, or a tag
    per step, `[batch, steps]`, as `StringLookup(invert=True)` gives) get a feature axis of 1,
    so that they read as the vectors and sequences of the five modes."""
    shape = tuple(out.shape[1:])  # type: ignore[attr-defined]
    if _dtype(out) == STRING and (not shape or shape == (None,)):
        return (*shape, 1)
    return shape


def _one_input(
    model: keras.Model, outputs: tuple[OutputSpec, ...], stated: Mode | None
) -> tuple[Signature, Mode]:
    """The input `input` and the mode (modes.py): a rank-1 integer input is a sequence of
    token ids where it feeds an Embedding (or the stated mode says so)."""
    tensor = model.inputs[0]
    shape = tuple(tensor.shape[1:])
    dtype = _dtype(tensor)
    signature = Signature((), outputs)
    if dtype == STRING:
        spec = _string_spec(model, tensor, SINGLE_INPUT_NAME, shape)
        return replace(signature, inputs=(spec,)), _string_mode(spec, signature, stated)
    vocabulary = _vocabulary(model, tensor)
    mode = resolve_mode(
        stated, shape, signature.packed_shape,
        _sequence_input(shape, dtype, vocabulary is not None),
    )  # fmt: skip
    tokens = mode.takes_sequence and len(shape) == 1
    spec = InputSpec(
        SINGLE_INPUT_NAME, shape, dtype, mode.takes_sequence, vocabulary if tokens else None
    )
    return replace(signature, inputs=(spec,)), mode


def _dtype(tensor: object) -> np.dtype:
    """A Keras tensor's dtype as numpy's (`STRING`, an object array, for text). Keras records
    the ids' dtype for the output of `StringLookup(invert=True)`, which gives strings."""
    layer = producer(tensor)
    if isinstance(layer, keras.layers.StringLookup) and layer.invert:
        return STRING
    name = keras.backend.standardize_dtype(tensor.dtype)  # type: ignore[attr-defined]
    return STRING if name == "string" else np.dtype(name)


def _string_spec(
    model: keras.Model, tensor: object, name: str, shape: tuple[int | None, ...]
) -> InputSpec:
    """A string input: a whole text per item (() or (1,)), or token strings per step."""
    words = _words(model, tensor)
    if shape in ((), (1,)):
        return InputSpec(name, shape, STRING, False, words=words)
    if len(shape) == 1:
        return InputSpec(name, shape, STRING, True, words=words)
    raise ModelLoadError(
        f"unsupported shape of string input {name}: {_shape_text(shape)}; expected () or (1,) "
        "for a whole text per item, or (steps,) for one token string per step"
    )


def _string_mode(spec: InputSpec, signature: Signature, stated: Mode | None) -> Mode:
    """Token strings take the modes token ids take; a whole text is a sequence the model
    makes itself: with a vector output, many-to-one."""
    if spec.sequence:
        return resolve_mode(stated, spec.shape, signature.packed_shape, True)
    if len(signature.packed_shape) != 1:
        raise ModelLoadError(
            "a whole-text input with an output per token: the model's tokenizer sets the number "
            "of tokens, which a batch cannot show per text; take one token string per step "
            "(keras.Input((None,), dtype='string')) for per-token outputs"
        )
    return reconcile_mode(stated, Mode.MANY_TO_ONE, f"input text {_shape_text(spec.shape)}")


def _words(model: keras.Model, tensor: object) -> tuple[str, ...]:
    """The vocabulary of the lookup layers (StringLookup, TextVectorization) a string input
    feeds: what the proof writes its probe texts from (empty where it feeds none)."""
    try:
        graph = graph_of(model, several_inputs=True)
    except GraphError:
        return ()
    words: list[str] = []
    for node in graph.nodes:
        op = node.operation
        if isinstance(op, keras.layers.StringLookup | keras.layers.TextVectorization) and any(
            kt is tensor for kt in node.inputs
        ):
            special = {"", "[UNK]", getattr(op, "oov_token", "[UNK]")}
            words += [str(w) for w in op.get_vocabulary() if str(w).strip() not in special]
    return tuple(dict.fromkeys(words))


def _output_names(model: keras.Model) -> list[str]:
    """Names in the order of `model.outputs`: a dict's keys for dict outputs (what calling the
    model returns), else the output layers' names."""
    structure = model.output
    if not isinstance(structure, dict):
        return list(model.output_names)
    key_of = {id(tensor): key for key, tensor in structure.items()}
    return [key_of[id(tensor)] for tensor in model.outputs]


def _check_several_outputs(specs: tuple[OutputSpec, ...]) -> None:
    """Outputs of one kind (all vectors, or all sequences of the input's steps) of one dtype are
    served packed; others are refused with the reason."""
    leading = {spec.shape[:-1] for spec in specs}
    dtypes = {spec.dtype for spec in specs}
    if len(leading) != 1 or len(dtypes) != 1 or any(s.shape[-1] is None for s in specs):
        described = ", ".join(f"{s.name} {list(s.shape)}" for s in specs)
        raise ModelLoadError(
            "seqserve serves several outputs when they are all vectors or all sequences, of "
            f"one dtype and a fixed number of features; this model has {described}"
        )


def _vocabulary(model: keras.Model, tensor: object) -> int | None:
    """The id range of an integer input `tensor` that feeds Embedding layers: their smallest
    input_dim."""
    try:
        graph = graph_of(model, several_inputs=True)
    except GraphError:
        return None
    dims = [
        int(node.operation.input_dim)
        for node in graph.nodes
        if isinstance(node.operation, keras.layers.Embedding)
        and any(kt is tensor for kt in node.inputs)
    ]
    return min(dims, default=None)


def _sequence_input(
    shape: tuple[int | None, ...], dtype: np.dtype, feeds_embedding: bool
) -> bool | None:
    """Whether an input is a sequence: (steps, features) is; (n,) of floats is a vector; (n,)
    of integer ids feeding an Embedding is a sequence of tokens; other integers are undecided
    (a config's stated mode settles them)."""
    rank = len(shape)
    if rank != 1:
        return rank == 2
    if not np.issubdtype(dtype, np.integer):
        return False
    return True if feeds_embedding else None


# -- several inputs ---------------------------------------------------------------------------

LENGTH_PROBE_START = 3  # lengths 3, 4, ... tell which input an output's length follows


def _several_inputs(
    model: keras.Model, outputs: tuple[OutputSpec, ...], stated: Mode | None
) -> tuple[Signature, Mode]:
    """Each input's spec, how the sequence inputs' lengths relate (one eager call on distinct
    lengths, a second on equal lengths when the first fails) and the mode (modes.py)."""
    specs = _input_specs(model)
    lengths, probed = _length_probe(model, specs)
    out_rank = len(outputs[0].shape)
    out_seq = out_rank == 2
    seq_lengths = [n for n in lengths if n is not None]
    follows, aligned = None, False
    if out_seq and seq_lengths:
        steps = int(probed.shape[1])
        named = [s.name for s, n in zip(specs, lengths, strict=True) if n == steps]
        follows = named[0] if named else None
        aligned = all(n == steps for n in seq_lengths)
    texts = any(s.text for s in specs)
    if texts and out_seq:
        raise ModelLoadError("a whole-text input with an output per token is not served")
    inferred = several_inputs_mode(bool(seq_lengths) or texts, out_rank, aligned)
    described = ", ".join(f"{s.name} {_shape_text(s.shape)}" for s in specs)
    mode = reconcile_mode(stated, inferred, f"inputs {described}")
    equal = len(seq_lengths) > 1 and len(set(seq_lengths)) == 1
    return Signature(specs, outputs, equal, follows), mode


def _input_specs(model: keras.Model) -> tuple[InputSpec, ...]:
    """Every input by name in the order of `model.inputs`: a dict's keys for dict inputs (what
    the model is called with), else the Input layers' names."""
    structure = model.input
    key_of = {id(t): k for k, t in structure.items()} if isinstance(structure, dict) else {}
    specs = []
    for tensor in model.inputs:
        shape = tuple(tensor.shape[1:])
        dtype = _dtype(tensor)
        if dtype == STRING:
            specs.append(_string_spec(model, tensor, key_of.get(id(tensor), tensor.name), shape))
            continue
        vocabulary = _vocabulary(model, tensor) if np.issubdtype(dtype, np.integer) else None
        sequence = bool(_sequence_input(shape, dtype, vocabulary is not None))
        name = key_of.get(id(tensor), tensor.name)
        if len(shape) not in (1, 2):
            raise ModelLoadError(
                f"unsupported shape of input {name}: {_shape_text(shape)}; expected (features,) "
                "for vectors, (steps, features) for sequences or (steps,) for token ids"
            )
        specs.append(InputSpec(name, shape, dtype, sequence, vocabulary))
    return _static_ids(tuple(specs))


def _static_ids(specs: tuple[InputSpec, ...]) -> tuple[InputSpec, ...]:
    """Fixed-length token ids beside a sequence input of any length are static ids (a user's
    or a device's ids: one fixed set per item, not steps on the other input's time axis)."""
    if not any(s.sequence and s.shape[0] is None for s in specs):
        return specs
    return tuple(
        replace(s, sequence=False) if s.tokens and s.shape[0] is not None else s for s in specs
    )


def _length_probe(
    model: keras.Model, specs: tuple[InputSpec, ...]
) -> tuple[list[int | None], np.ndarray]:
    """The eager model on one item whose sequence inputs have distinct lengths where it takes
    them, else equal ones: those lengths (None for vectors) and the first output."""
    failure = None
    for distinct in (True, False):
        lengths: list[int | None] = []
        for k, spec in enumerate(specs):
            if not spec.sequence:
                lengths.append(None)
            else:
                lengths.append(spec.shape[0] or LENGTH_PROBE_START + (k if distinct else 0))
        arrays = [
            _zeros(s, n).reshape(-1, *s.shape) if s.text else _zeros(s, n)
            for s, n in zip(specs, lengths, strict=True)
        ]
        model_inputs = (
            {s.name: a for s, a in zip(specs, arrays, strict=True)}
            if isinstance(model.input, dict)
            else arrays
        )
        try:
            out = model(model_inputs, training=False)
        except Exception as exc:  # noqa: BLE001 - a model that rejects unequal lengths
            failure = exc
            continue
        return lengths, keras.ops.convert_to_numpy(keras.tree.flatten(out)[0])
    raise ModelLoadError(
        f"the model fails on a probe with inputs {_shape_text([s.shape for s in specs])}: "
        f"{type(failure).__name__}: {failure}"[:400]
    )


def _zeros(spec: InputSpec, steps: int | None) -> np.ndarray:
    """A batch of one of the input, `steps` long where its time axis is dynamic (text: a word
    of the model's vocabulary, or "a")."""
    shape = TEXT_SHAPE if spec.text else spec.shape
    size = [1, *(int(steps or 0) if d is None else d for d in shape)]
    if spec.string:
        return np.full(size, (spec.words[:1] or ("a",))[0].encode(), STRING)
    return np.zeros(size, spec.dtype)


def _shape_text(shape: object) -> str:
    return str(shape).replace("None", "any")


def configure_tensorflow(intra_op_threads: int, inter_op_threads: int) -> None:
    """Thread pools must be set before TensorFlow runs its first op (0 keeps TF's choice)."""
    if intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
    if inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
