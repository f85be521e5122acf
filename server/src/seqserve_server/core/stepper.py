"""Incremental step programs for stateful streaming sessions over Keras 3 sequence models.

A session feeds a live sequence a few steps at a time. Re-running the model on the whole
prefix costs O(T) per chunk; a step program instead keeps each session's recurrent state
(RNN cell states, causal-conv input windows, tail buffers) so a chunk of ``k`` new steps costs
O(k) whatever the prefix length.

``build_step_program`` walks the model's functional graph and classifies every tensor as

* ``seq``: aligned with the input steps; its new steps are computed from the new input steps
  plus carried state (per-step layers, recurrent layers, causal Conv1D, elementwise merges);
* ``static``: not aligned with input steps (final RNN output, decoder, cropped tail). Static
  tensors are recomputed from the carried state when an output is needed, exactly as the full
  model would compute them had the sequence ended there.

Graphs that cannot be stepped exactly fall back to ``RecomputeProgram``, which keeps the input
prefix and re-runs a compiled full-model function (same interface, O(T) per step). Inputs are
float steps ``[B, k, features]`` or token ids ``[B, k]`` (an Embedding is a per-step layer).
The server uses a program only after it passed the load-time proof (proof.py, applied by
``sessions.proven_program``); graph access shared with the runtime lives in graph.py.

This module is pure Keras/TF/numpy on purpose: the transport layer owns gRPC and protobuf.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf
from keras import tree

from .graph import Graph, GraphError, call_op, graph_of, run_node, time_distributed

__all__ = [
    "MODES",
    "IncrementalProgram",
    "RecomputeProgram",
    "SessionsUnsupportedError",
    "State",
    "StepProgram",
    "StepperError",
    "build_step_program",
    "split_states",
    "stack_states",
]

State = dict[str, np.ndarray]

MODES = ("many_to_one", "many_to_many_aligned", "many_to_many_unaligned")
_UNSUPPORTED_MODES = {
    "one_to_one": "the model maps one input vector to one output; there is no sequence to "
    "stream, so a plain predict call is the whole computation",
    "one_to_many": "the model expands one input vector into a sequence; its input is not a "
    "sequence that could arrive a few steps at a time",
}
_OUTPUT_KIND = {
    "many_to_many_aligned": "per_step",
    "many_to_one": "running_vector",
    "many_to_many_unaligned": "decoded_sequence",
}
_T_KEY = "t"  # steps consumed so far, per session ([B] int32); present in every state


class StepperError(ValueError):
    """Invalid use of a step program (bad mode, bad shapes, unstackable states)."""


class SessionsUnsupportedError(StepperError):
    """The model/mode combination cannot serve streaming sessions at all."""


class StepProgram(Protocol):
    """Stateful incremental evaluation of one model for streaming sessions."""

    support: str  # "incremental" | "recompute"
    reason: str
    output_kind: str  # "per_step" | "running_vector" | "decoded_sequence"
    mode: str
    n_features: int | None  # None: token ids ([B, k] integers), no feature axis
    input_dtype: np.dtype
    fixed_length: int | None

    def initial_state(self, batch: int = 1) -> State: ...

    def step(self, state: State, x: np.ndarray) -> tuple[State, np.ndarray]: ...

    def finish(self, state: State) -> np.ndarray: ...

    @staticmethod
    def stack(states: Sequence[State]) -> State: ...

    def split(self, state: State) -> list[State]: ...


# --------------------------------------------------------------------------- state batching


def stack_states(states: Sequence[State]) -> State:
    """Concatenate session states along the batch axis (exact: pure data movement)."""
    if not states:
        raise StepperError("cannot stack an empty list of states")
    keys = set(states[0])
    for s in states[1:]:
        if set(s) != keys:
            raise StepperError("cannot stack states of different programs (keys differ)")
    out: State = {}
    for key in states[0]:
        parts = [np.asarray(s[key]) for s in states]
        tails = {p.shape[1:] for p in parts}
        if len(tails) != 1:
            raise StepperError(
                f"cannot stack states whose '{key}' shapes differ {sorted(tails)}; recompute "
                "sessions can only be batched when their prefixes have equal length"
            )
        out[key] = np.concatenate(parts, axis=0)
    return out


def split_states(state: State) -> list[State]:
    """Split a batched state into batch-1 states (inverse of ``stack_states``)."""
    batch = _batch_of(state)
    return [{k: v[i : i + 1].copy() for k, v in state.items()} for i in range(batch)]


def _batch_of(state: State) -> int:
    return int(np.asarray(state[_T_KEY]).shape[0])


def _tile(arrays: dict[str, np.ndarray], batch: int) -> State:
    return {k: np.repeat(v, batch, axis=0) for k, v in arrays.items()}


@dataclass(frozen=True)
class _Input:
    """A program's input: float steps [B, k, features] or token ids [B, k] (features None)."""

    dtype: np.dtype
    features: int | None

    @classmethod
    def of(cls, model: keras.Model) -> _Input:
        tensor = model.inputs[0]
        dtype = np.dtype(keras.backend.standardize_dtype(tensor.dtype))
        if len(tensor.shape) == 2 and np.issubdtype(dtype, np.integer):
            return cls(dtype, None)
        return cls(np.dtype(np.float32), int(tensor.shape[-1]))

    def shape(self, batch: int | None, steps: int | None) -> list[int | None]:
        return [batch, steps] if self.features is None else [batch, steps, self.features]

    def zeros(self, batch: int, steps: int) -> np.ndarray:
        return np.zeros(self.shape(batch, steps), self.dtype)  # type: ignore[arg-type]

    def spec(self, steps: int | None) -> tf.TensorSpec:
        return tf.TensorSpec(self.shape(None, steps), tf.as_dtype(self.dtype))


def _check_chunk(x: np.ndarray, state: State, layout: _Input) -> np.ndarray:
    x = np.asarray(x).astype(layout.dtype, copy=False)
    want = layout.shape(None, None)
    if x.ndim != len(want) or (layout.features is not None and x.shape[2] != layout.features):
        shown = ", ".join("k" if d is None else str(d) for d in want[1:])
        raise StepperError(f"chunk must be [B, {shown}], got {list(x.shape)}")
    if x.shape[0] != _batch_of(state):
        raise StepperError(f"chunk batch {x.shape[0]} != state batch {_batch_of(state)}")
    return x


# --------------------------------------------------------------------------- classification


class _Unsteppable(Exception):
    """Internal: the graph cannot be stepped exactly; the message is the fallback reason."""


_L = keras.layers
_PER_STEP_LAYERS: tuple[type, ...] = (
    _L.Dense,
    _L.Embedding,
    _L.Activation,
    _L.Dropout,
    _L.SpatialDropout1D,
    _L.GaussianNoise,
    _L.GaussianDropout,
    _L.AlphaDropout,
    _L.ActivityRegularization,
    _L.Rescaling,
    _L.Masking,
    _L.Identity,
    _L.ReLU,
    _L.LeakyReLU,
    _L.ELU,
)
_AXIS_LAYERS: tuple[type, ...] = (
    _L.Normalization,
    _L.LayerNormalization,
    _L.BatchNormalization,
    _L.UnitNormalization,
    _L.Softmax,
)
_ELEMENTWISE_MERGES: tuple[type, ...] = (
    _L.Add,
    _L.Subtract,
    _L.Multiply,
    _L.Average,
    _L.Maximum,
    _L.Minimum,
)
# keras.ops nodes that Keras itself records for masks (Masking -> NotEqual -> Any) or that
# users write inline; elementwise ones are per-step when their tensor args are all aligned.
_ELEMENTWISE_NAMES = (
    "Add Subtract Multiply Divide TrueDivide Negative Abs Absolute Exp Log Sqrt Square "
    "Power Maximum Minimum NotEqual Equal Greater GreaterEqual Less LessEqual LogicalAnd "
    "LogicalOr LogicalNot Where Cast Tanh Sigmoid Relu Softplus Clip Sign"
)
_REDUCE_NAMES = "Any All Sum Mean Max Min Prod"
_ELEMENTWISE_OPS = frozenset(_ELEMENTWISE_NAMES.split())
_REDUCE_OPS = frozenset(_REDUCE_NAMES.split())


def _positive_axes(axis: Any, rank: int) -> set[int] | None:
    if axis is None:
        return None
    axes = [axis] if isinstance(axis, int) else list(axis)
    return {a % rank for a in axes}


def _is_per_step(node: Any) -> bool:
    """True when the op acts on each time step independently (time axis = 1)."""
    op = node.operation
    tensors = node.arguments.keras_tensors
    rank = len(tensors[0].shape)
    if isinstance(op, _PER_STEP_LAYERS + _ELEMENTWISE_MERGES):
        return True
    if isinstance(op, _AXIS_LAYERS):
        axes = _positive_axes(getattr(op, "axis", None), rank)
        # Normalization(axis=None) uses scalar statistics: still position independent.
        return isinstance(op, _L.Normalization) if axes is None else 1 not in axes
    if isinstance(op, _L.Concatenate):
        return op.axis % rank >= 2
    if isinstance(op, _L.Conv1D) and op.kernel_size == (1,) and op.strides == (1,):
        return op.data_format == "channels_last"
    if isinstance(op, _L.Layer) or not type(op).__module__.startswith("keras.src.ops"):
        return False
    name = type(op).__name__
    scalars_only = all(
        np.ndim(a) == 0 or a is None
        for a in tree.flatten((node.arguments.args, node.arguments.kwargs))
        if not isinstance(a, keras.KerasTensor)
    )
    same_rank = len({len(t.shape) for t in tensors}) == 1
    if name in _ELEMENTWISE_OPS:
        return scalars_only and same_rank
    if name in _REDUCE_OPS:
        axes = _positive_axes(getattr(op, "axis", None), rank)
        return axes is not None and min(axes) >= 2
    return False


def _describe(op: Any) -> str:
    return f"{type(op).__name__} '{getattr(op, 'name', '?')}'"


# --------------------------------------------------------------------------- stepped ops


class _SeqOp:
    """A node on the aligned (``seq``) side: maps new input steps plus state to new steps."""

    def __init__(self, node: Any, key: str) -> None:
        self.node = node
        self.key = key

    def initial(self) -> dict[str, np.ndarray]:
        return {}

    def run(self, values: dict[int, Any], state: dict, new_state: dict) -> None:
        run_node(self.node, values)


class _PerStep(_SeqOp):
    """Time-local layer: applying it to the new steps only is exact."""


class _TimeDistributed(_SeqOp):
    """TimeDistributed: the wrapped layer on all new steps folded into the batch axis (Keras'
    own dynamic-length path is wrong, see graph.py); the per-row math is identical."""

    def run(self, values: dict[int, Any], state: dict, new_state: dict) -> None:
        values[id(self.node.outputs[0])] = time_distributed(self.node, values)


class _Recurrent(_SeqOp):
    """Keras RNN layer run cell-by-cell from the carried cell states (mask-aware)."""

    def __init__(self, node: Any, key: str) -> None:
        super().__init__(node, key)
        layer = node.operation
        init = layer.get_initial_state(1)
        self._struct = init
        self._init = [np.asarray(keras.ops.convert_to_numpy(s)) for s in tree.flatten(init)]
        self._units = int(node.outputs[0].shape[-1])
        self._cell_kwargs = {"training": False} if layer.cell._call_has_training_arg else {}

    def skey(self, i: int) -> str:
        return f"{self.key}/s{i}"

    def initial(self) -> dict[str, np.ndarray]:
        out = {self.skey(i): v.astype(np.float32) for i, v in enumerate(self._init)}
        out[f"{self.key}/out"] = np.zeros((1, self._units), np.float32)
        return out

    def run(self, values: dict[int, Any], state: dict, new_state: dict) -> None:
        layer = self.node.operation
        args, kwargs = self.node.arguments.fill_in(values)
        x, mask = args[0], kwargs.get("mask")
        states = [state[self.skey(i)] for i in range(len(self._init))]
        seq, last, final = self._loop(layer, x, mask, states, state[f"{self.key}/out"])
        for i, s in enumerate(final):
            new_state[self.skey(i)] = s
        new_state[f"{self.key}/out"] = last
        values[id(self.node.outputs[0])] = seq if layer.return_sequences else last

    def _loop(
        self, layer: Any, x: tf.Tensor, mask: Any, states: list, prev_out: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, list]:
        """Mirror ``backend.rnn``: masked steps keep state and repeat the previous output.

        The previous output is carried across chunks, so a chunk starting on masked steps
        matches the full run (Keras carries it within one call only).
        """
        xs = tf.transpose(x, [1, 0, *range(2, len(x.shape))])
        ms = None if mask is None else tf.transpose(tf.cast(mask, tf.bool))
        zero_masked = bool(layer.zero_output_for_mask)

        def cell_step(i: Any, out_prev: tf.Tensor, flat: Sequence) -> tuple[tf.Tensor, list]:
            packed = tree.pack_sequence_as(self._struct, list(flat))
            out, new = layer.cell(xs[i], packed, **self._cell_kwargs)
            new_flat = tree.flatten(new)
            if ms is not None:
                m = ms[i][:, None]
                new_flat = [tf.where(m, n, o) for n, o in zip(new_flat, flat, strict=True)]
                out = tf.where(m, out, tf.zeros_like(out) if zero_masked else out_prev)
            return out, new_flat

        if x.shape[1] == 1:  # the k=1 specialisation: no loop machinery at all
            out, final = cell_step(0, prev_out, states)
            return out[:, None], out, final

        def body(i: tf.Tensor, out_prev: tf.Tensor, flat: tuple, ta: tf.TensorArray) -> tuple:
            out, new_flat = cell_step(i, out_prev, flat)
            return i + 1, out, tuple(new_flat), ta.write(i, out)

        k = tf.shape(xs)[0]
        ta = tf.TensorArray(tf.float32, size=k, element_shape=prev_out.shape)
        _, last, final, ta = tf.while_loop(
            lambda i, *_: i < k, body, (tf.constant(0), prev_out, tuple(states), ta)
        )
        seq = tf.transpose(ta.stack(), [1, 0, 2])
        return seq, last, list(final)


class _CausalConv(_SeqOp):
    """Causal Conv1D: keeps the last (kernel-1)*dilation inputs; zeros = causal padding."""

    def __init__(self, node: Any, key: str) -> None:
        super().__init__(node, key)
        op = node.operation
        self.window = (op.kernel_size[0] - 1) * op.dilation_rate[0]
        self._channels = int(node.arguments.keras_tensors[0].shape[-1])

    def initial(self) -> dict[str, np.ndarray]:
        return {f"{self.key}/win": np.zeros((1, self.window, self._channels), np.float32)}

    def run(self, values: dict[int, Any], state: dict, new_state: dict) -> None:
        args, kwargs = self.node.arguments.fill_in(values)
        win = state[f"{self.key}/win"]
        cat = tf.concat([win, args[0]], axis=1)
        # The layer's own causal padding only touches outputs of the window steps, which
        # are dropped, so the kept outputs are exactly the full-sequence ones.
        y = call_op(self.node.operation, [cat, *args[1:]], kwargs)
        values[id(self.node.outputs[0])] = y[:, self.window :]
        new_state[f"{self.key}/win"] = tf.ensure_shape(
            cat[:, -self.window :], [None, self.window, self._channels]
        )


class _TailWindow(_SeqOp):
    """Fixed-length transition (Cropping1D, Flatten, Reshape): buffer the last W steps.

    Only meaningful once exactly ``length`` steps were fed (the model's input length); the
    program reports NaN / refuses to finish otherwise.
    """

    def __init__(self, node: Any, key: str, length: int) -> None:
        super().__init__(node, key)
        op = node.operation
        src = node.arguments.keras_tensors[0]
        self.length = length
        self._tail_shape = tuple(int(d) for d in src.shape[2:])
        if isinstance(op, _L.Cropping1D):
            front, back = op.cropping
            self.window = length - front
            self._keep = length - front - back
        else:
            self.window = length
            self._keep = None

    def initial(self) -> dict[str, np.ndarray]:
        return {f"{self.key}/buf": np.zeros((1, self.window, *self._tail_shape), np.float32)}

    def run(self, values: dict[int, Any], state: dict, new_state: dict) -> None:
        src = values[id(self.node.arguments.keras_tensors[0])]
        cat = tf.concat([state[f"{self.key}/buf"], src], axis=1)
        new_state[f"{self.key}/buf"] = tf.ensure_shape(
            cat[:, -self.window :], [None, self.window, *self._tail_shape]
        )

    def frontier(self, state: dict) -> tf.Tensor:
        buf = state[f"{self.key}/buf"]
        if self._keep is not None:
            return buf[:, : self._keep]
        args, kwargs = self.node.arguments.fill_in({id(self.node.arguments.keras_tensors[0]): buf})
        return call_op(self.node.operation, args, kwargs)


@dataclass
class _Plan:
    """Result of graph analysis: stepped ops, static nodes and where static values come from."""

    seq_ops: list[_SeqOp] = field(default_factory=list)
    static_nodes: list[Any] = field(default_factory=list)
    frontier: dict[int, Callable[[dict], tf.Tensor]] = field(default_factory=dict)
    output_is_seq: bool = False
    fixed_length: int | None = None
    counts: dict[str, int] = field(default_factory=dict)


def _fixed_length_of(node: Any) -> int:
    length = node.arguments.keras_tensors[0].shape[1]
    if length is None:
        raise _Unsteppable(
            f"{_describe(node.operation)} depends on absolute positions of a variable-length "
            "sequence"
        )
    return int(length)


def _classify_seq_node(node: Any, key: str, plan: _Plan) -> tuple[_SeqOp, bool]:
    """Return the stepped op for a node whose inputs are all aligned, and if it stays aligned."""
    op = node.operation
    if isinstance(op, _L.RNN):
        if op.go_backwards:
            raise _Unsteppable(f"{_describe(op)} runs backwards (go_backwards=True)")
        extra = node.arguments.keras_tensors[1:]
        if any(id(kt) != id(node.arguments.kwargs.get("mask")) for kt in extra):
            raise _Unsteppable(f"{_describe(op)} takes graph tensors besides its input/mask")
        return _Recurrent(node, key), bool(op.return_sequences)
    if len(node.outputs) != 1:
        raise _Unsteppable(f"{_describe(op)} has several outputs on the stepped path")
    if isinstance(op, _L.TimeDistributed):
        return _TimeDistributed(node, key), True
    if _is_per_step(node):
        return _PerStep(node, key), True
    if isinstance(op, _L.Conv1D) and op.padding == "causal":
        if op.strides != (1,) or op.data_format != "channels_last":
            raise _Unsteppable(f"{_describe(op)} is strided or channels_first")
        return _CausalConv(node, key), True
    if isinstance(op, _L.Cropping1D | _L.Flatten | _L.Reshape):
        length = _fixed_length_of(node)
        if plan.fixed_length not in (None, length):
            raise _Unsteppable("tail windows of different fixed lengths")
        plan.fixed_length = length
        return _TailWindow(node, key, length), False
    raise _Unsteppable(f"{_describe(op)} is not steppable over time (no exact incremental form)")


def _reader(key: str) -> Callable[[dict], tf.Tensor]:
    return lambda state: state[key]


def _frontier_of(op: _SeqOp, stays_aligned: bool) -> dict[int, Callable[[dict], tf.Tensor]]:
    """Static outputs of a stepped op and how to read them from the carried state.

    RNNs expose their last output (``return_sequences=False``) and, with ``return_state``,
    their final cell states (e.g. an encoder handing ``[h, c]`` to a decoder).
    """
    outs = op.node.outputs
    if isinstance(op, _Recurrent):
        found = {id(kt): _reader(op.skey(i)) for i, kt in enumerate(outs[1:])}
        if not stays_aligned:
            found[id(outs[0])] = _reader(f"{op.key}/out")
        return found
    if isinstance(op, _TailWindow):
        return {id(outs[0]): op.frontier}
    return {}


def _analyse(graph: Graph) -> _Plan:
    plan = _Plan()
    aligned: set[int] = {id(graph.input)}
    static: set[int] = set()
    for i, node in enumerate(graph.nodes):
        ins = [id(kt) for kt in node.arguments.keras_tensors]
        if all(t in static for t in ins):  # includes constant-only nodes
            plan.static_nodes.append(node)
            static.update(id(kt) for kt in node.outputs)
            continue
        if not all(t in aligned for t in ins):
            raise _Unsteppable(
                f"{_describe(node.operation)} mixes step-aligned and whole-sequence tensors"
            )
        key = f"{i:02d}.{node.operation.name}"
        op, stays_aligned = _classify_seq_node(node, key, plan)
        plan.seq_ops.append(op)
        kind = type(op).__name__.lstrip("_")
        plan.counts[kind] = plan.counts.get(kind, 0) + 1
        if stays_aligned:
            aligned.add(id(node.outputs[0]))
        for kt_id, fn in _frontier_of(op, stays_aligned).items():
            static.add(kt_id)
            plan.frontier[kt_id] = fn
    plan.output_is_seq = id(graph.output) in aligned
    return plan


# --------------------------------------------------------------------------- programs


def _state_spec(example: State) -> dict[str, tf.TensorSpec]:
    return {
        k: tf.TensorSpec([None, *v.shape[1:]], tf.as_dtype(v.dtype)) for k, v in example.items()
    }


def _concrete(fn: Callable, spec: dict, x_spec: tf.TensorSpec) -> Any:
    return tf.function(fn, input_signature=[spec, x_spec]).get_concrete_function()


def _to_numpy(tensors: dict[str, tf.Tensor]) -> State:
    return {k: v.numpy() for k, v in tensors.items()}


class _ProgramBase:
    """Shared interface pieces: mode, shapes, batching helpers."""

    support = ""
    reason = ""

    def __init__(self, mode: str, layout: _Input, out_shape: tuple[int, ...]) -> None:
        self.mode = mode
        self.output_kind = _OUTPUT_KIND[mode]
        self.layout = layout
        self.n_features = layout.features
        self.input_dtype = layout.dtype
        self.fixed_length: int | None = None
        self._out_shape = out_shape  # output shape without batch (and time for sequences)

    @staticmethod
    def stack(states: Sequence[State]) -> State:
        """Merge sessions along the batch axis; see ``stack_states``."""
        return stack_states(states)

    def split(self, state: State) -> list[State]:
        """Back to batch-1 states; see ``split_states``."""
        return split_states(state)

    def _empty(self, batch: int) -> np.ndarray:
        return np.zeros((batch, 0, *self._out_shape), np.float32)

    def _check_finished(self, state: State) -> None:
        t = np.asarray(state[_T_KEY])
        if self.fixed_length is not None and np.any(t != self.fixed_length):
            raise StepperError(
                f"model has fixed input length {self.fixed_length}; sessions fed {t.tolist()} steps"
            )


class IncrementalProgram(_ProgramBase):
    """Exact O(k) stepping of a model graph; one compiled step function per program."""

    support = "incremental"

    def __init__(self, model: keras.Model, mode: str, graph: Graph, plan: _Plan) -> None:
        layout = _Input.of(model)
        out_shape = tuple(int(d) for d in graph.output.shape[2 if mode != "many_to_one" else 1 :])
        super().__init__(mode, layout, out_shape)
        self.model = model
        self.fixed_length = plan.fixed_length
        self.reason = "stepped exactly: " + ", ".join(
            f"{n} {k}" for k, n in sorted(plan.counts.items())
        )
        self._graph = graph
        self._plan = plan
        init: State = {_T_KEY: np.zeros((1,), np.int32)}
        for op in plan.seq_ops:
            init.update(op.initial())
        self._init = init
        spec = _state_spec(init)
        # Two traces: any k (while_loop over steps) and k=1 (straight-line, the common case).
        # Concrete functions are called directly: cheaper than tf.function dispatch.
        self._step_any = _concrete(self._step_graph, spec, layout.spec(None))
        self._step_one = _concrete(self._step_graph, spec, layout.spec(1))
        self._finish_fn = tf.function(self._static_graph).get_concrete_function(spec)
        for k in (1, 2):  # warm up both traces
            self.step(self.initial_state(1), layout.zeros(1, k))

    def initial_state(self, batch: int = 1) -> State:
        return _tile(self._init, batch)

    def _step_graph(self, state: dict, x: tf.Tensor) -> tuple[dict, tf.Tensor]:
        values: dict[int, Any] = {id(self._graph.input): x}
        new_state = dict(state)
        new_state[_T_KEY] = state[_T_KEY] + tf.shape(x)[1]
        for op in self._plan.seq_ops:
            op.run(values, state, new_state)
        if self.output_kind == "per_step":
            y = values[id(self._graph.output)]
        elif self.output_kind == "running_vector":
            y = self._static_graph(new_state)
        else:
            y = tf.zeros([tf.shape(x)[0], 0, *self._out_shape])
        return new_state, y

    def _static_graph(self, state: dict) -> tf.Tensor:
        """Evaluate the non-aligned part of the graph from the carried state."""
        if self._plan.output_is_seq:
            return tf.zeros([tf.shape(state[_T_KEY])[0], 0, *self._out_shape])
        values = {kt_id: fn(state) for kt_id, fn in self._plan.frontier.items()}
        for node in self._plan.static_nodes:
            run_node(node, values)
        y = tf.cast(values[id(self._graph.output)], tf.float32)
        if self.fixed_length is not None:
            ok = tf.equal(state[_T_KEY], self.fixed_length)
            ok = tf.reshape(ok, [-1, *([1] * (len(y.shape) - 1))])
            y = tf.where(ok, y, tf.fill(tf.shape(y), np.float32("nan")))
        return y

    def step(self, state: State, x: np.ndarray) -> tuple[State, np.ndarray]:
        """Consume ``x`` [B, k, F]; return the new state and this step's output."""
        x = _check_chunk(x, state, self.layout)
        if x.shape[1] == 0:
            return state, self._no_new_steps(state)
        step_fn = self._step_one if x.shape[1] == 1 else self._step_any
        new_state, y = step_fn(state, x)
        return _to_numpy(new_state), y.numpy()

    def _no_new_steps(self, state: State) -> np.ndarray:
        if self.output_kind == "running_vector":
            return self._finish_fn(state).numpy()
        return self._empty(_batch_of(state))

    def finish(self, state: State) -> np.ndarray:
        """Decoded sequence (unaligned) / running vector (many_to_one) / empty (aligned)."""
        if self.output_kind == "decoded_sequence":
            self._check_finished(state)
        if self.output_kind == "per_step":
            return self._empty(_batch_of(state))
        return self._finish_fn(state).numpy()


class RecomputeProgram(_ProgramBase):
    """Fallback: keep the input prefix and re-run a compiled full-model function (O(T)/step).

    States of different prefix lengths cannot be stacked (``stack`` raises), so the caller
    batches only sessions with equal prefix length, or steps them one by one.
    """

    support = "recompute"

    def __init__(
        self,
        model: keras.Model,
        mode: str,
        reason: str,
        compute: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        """`compute`: the full model on a dense batch (the server passes its proven path);
        by default Keras' call traced with dynamic batch and time axes."""
        inp, out = model.inputs[0], model.outputs[0]
        out_shape = tuple(int(d) for d in out.shape[2 if mode != "many_to_one" else 1 :])
        layout = _Input.of(model)
        super().__init__(mode, layout, out_shape)
        self.model = model
        self.reason = reason
        length = inp.shape[1]
        self.fixed_length = None if length is None else int(length)
        if compute is None:
            spec = layout.spec(self.fixed_length)
            run = tf.function(lambda x: model(x, training=False), [spec]).get_concrete_function()
            compute = lambda x: run(tf.constant(x)).numpy()  # noqa: E731
        self._compute = compute
        self._compute(layout.zeros(1, self.fixed_length or 1))

    def initial_state(self, batch: int = 1) -> State:
        return {"x": self.layout.zeros(batch, 0), _T_KEY: np.zeros((batch,), np.int32)}

    def _outputs(self, prefix: np.ndarray) -> np.ndarray | None:
        """Full-model output on the prefix, or None where the model is undefined (length)."""
        if prefix.shape[1] == 0 or self.fixed_length not in (None, prefix.shape[1]):
            return None
        return np.asarray(self._compute(prefix), np.float32)

    def step(self, state: State, x: np.ndarray) -> tuple[State, np.ndarray]:
        """Append ``x`` to the prefix and recompute the output the mode asks for."""
        x = _check_chunk(x, state, self.layout)
        prefix = np.concatenate([state["x"], x], axis=1)
        new_state = {"x": prefix, _T_KEY: state[_T_KEY] + np.int32(x.shape[1])}
        batch, k = x.shape[:2]
        if self.output_kind == "decoded_sequence" or (k == 0 and self.output_kind == "per_step"):
            return new_state, self._empty(batch)
        y = self._outputs(prefix)
        if self.output_kind == "per_step":
            if y is None:
                return new_state, np.full((batch, k, *self._out_shape), np.nan, np.float32)
            return new_state, y[:, -k:]
        if y is None:
            return new_state, np.full((batch, *self._out_shape), np.nan, np.float32)
        return new_state, y

    def finish(self, state: State) -> np.ndarray:
        """Full-model output on the whole prefix (empty for aligned programs)."""
        if self.output_kind == "per_step":
            return self._empty(_batch_of(state))
        self._check_finished(state)
        y = self._outputs(state["x"])
        if y is None:
            raise StepperError("no steps were fed; the model output is undefined")
        return y


# --------------------------------------------------------------------------- entry point


def _check_model(model: keras.Model, mode: str) -> None:
    if mode in _UNSUPPORTED_MODES:
        raise SessionsUnsupportedError(
            f"sessions are unsupported for mode '{mode}': {_UNSUPPORTED_MODES[mode]}"
        )
    if mode not in MODES:
        raise StepperError(f"unknown mode '{mode}', expected one of {MODES}")
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        raise SessionsUnsupportedError("model has no symbolic inputs/outputs (not built?)")
    if len(inputs) != 1 or len(outputs) != 1:
        raise SessionsUnsupportedError("sessions need a single sequence input and output")
    if len(inputs[0].shape) != 3 and _Input.of(model).features is not None:
        raise SessionsUnsupportedError(
            f"sessions need a [batch, time, features] or [batch, time] token id input, got "
            f"{inputs[0].shape}"
        )
    want = 2 if mode == "many_to_one" else 3
    if len(outputs[0].shape) != want:
        raise SessionsUnsupportedError(
            f"mode '{mode}' needs a rank-{want} output, model gives {outputs[0].shape}"
        )


def _incremental(model: keras.Model, mode: str) -> IncrementalProgram:
    try:
        graph = graph_of(model)
    except GraphError as exc:
        raise _Unsteppable(str(exc)) from exc
    plan = _analyse(graph)
    if plan.output_is_seq != (mode == "many_to_many_aligned"):
        where = "aligned with" if plan.output_is_seq else "not aligned with"
        raise _Unsteppable(f"model output is {where} the input steps but mode is '{mode}'")
    try:
        return IncrementalProgram(model, mode, graph, plan)
    except Exception as exc:  # tracing an exotic layer failed: recompute is still exact
        raise _Unsteppable(f"tracing the step function failed: {exc!r}"[:300]) from exc


def build_step_program(
    model: keras.Model,
    mode: str,
    compute: Callable[[np.ndarray], np.ndarray] | None = None,
    incremental: bool = True,
) -> StepProgram:
    """Compile a step program for ``model`` under ``mode``; falls back to recompute (through
    ``compute``, see ``RecomputeProgram``). ``incremental=False`` asks for recompute at once.

    Raises ``SessionsUnsupportedError`` (a ``ValueError``) for modes/models that cannot hold a
    streaming session at all. ``mode`` may be a plain string or a ``str`` enum member.
    """
    mode = str(getattr(mode, "value", mode))  # str-enum members hash by name, not value
    _check_model(model, mode)
    if not incremental:
        return RecomputeProgram(model, mode, "recompute requested", compute)
    try:
        return _incremental(model, mode)
    except _Unsteppable as exc:
        return RecomputeProgram(model, mode, str(exc), compute)
