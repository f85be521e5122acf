"""A numpy step program: an incremental program's graph computed with numpy from the weights.

Why: at batch 1 a session step is a few small matrix products (an LSTM(64) -> Dense step is
~50 µs in numpy), while a call of the traced step function costs ~1 ms of TensorFlow dispatch
and tensor conversion (`python -m bench.step_cost`); Predict's small batches likewise
(`numpy_model`: the program fed the whole sequence; `python -m bench.numpy_cost`). A chunk of k
steps is one call: the inputs' projection is one product, then a loop over the steps. It covers
the common recurrent stacks (Dense, Embedding, Masking and the mask nodes Keras records,
Rescaling, LayerNormalization over features, ReLU, activations, merges, inference-time
identities, TimeDistributed of a per-step layer, causal Conv1D, LSTM / GRU / SimpleRNN with or
without a mask); any other node raises `Unsteppable` and the traced path stays. The server uses
it only after the same load-time proof every compute path passes.

The state layout is the incremental program's own (same keys), so either can carry a session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import threadpoolctl

from ..graph import Graph
from ..modes import Mode
from ..signature import Signature
from .analysis import IDENTITY_AT_INFERENCE, Plan, Unsteppable
from .keras_internals import Node, OpsCall, ops_call
from .ops import CausalConv, PerStep, Recurrent, TimeDistributed
from .programs import (
    Chunk,
    IncrementalProgram,
    StepProgram,
    initial_state_of,
    one_input_signature,
    step_plan,
)
from .state import STEPS, State, batch_of

Array = np.ndarray
NodeFn = Callable[[Array], Array]

_L = keras.layers


def _sigmoid(x: Array) -> Array:
    y = np.multiply(x, np.float32(0.5))
    np.tanh(y, out=y)
    y += np.float32(1)
    y *= np.float32(0.5)
    return y


def _softmax(x: Array) -> Array:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _linear(x: Array) -> Array:
    return x


def _relu(x: Array) -> Array:
    return np.maximum(x, np.float32(0))


_ACTIVATIONS: dict[Any, NodeFn] = {
    keras.activations.linear: _linear,
    keras.activations.tanh: np.tanh,
    keras.activations.sigmoid: _sigmoid,
    keras.activations.relu: _relu,
    keras.activations.softmax: _softmax,
    None: _linear,
}


def _activation(fn: Any, where: str) -> NodeFn:
    found = _ACTIVATIONS.get(fn)
    if found is None:
        name = getattr(fn, "__name__", repr(fn))
        raise Unsteppable(f"{where}: activation {name!r} has no numpy form")
    return found


def _weight(variable: Any) -> Array:
    return np.ascontiguousarray(keras.ops.convert_to_numpy(variable), np.float32)


def _check_float32(layer: Any) -> None:
    if layer.compute_dtype != "float32" or getattr(layer.dtype_policy, "quantization_mode", None):
        raise Unsteppable(f"layer {layer.name!r} computes in {layer.dtype_policy.name}")


def _dense(layer: Any) -> NodeFn:
    _check_float32(layer)
    kernel = _weight(layer.kernel)
    bias = None if layer.bias is None else _weight(layer.bias)
    act = _activation(layer.activation, f"Dense {layer.name!r}")

    def run(x: Array) -> Array:
        y = x @ kernel
        return act(y if bias is None else y + bias)

    return run


def _embedding(layer: Any) -> NodeFn:
    """The lookup; with `mask_zero` the mask is a node of its own (NotEqual) in the graph."""
    table = _weight(layer.embeddings)
    return lambda ids: table[ids]


def _masking(layer: Any) -> NodeFn:
    """Keras' Masking.call: steps whose every feature equals `mask_value` become zeros (its
    mask is a NotEqual -> Any pair of nodes in the graph)."""
    value = np.float32(layer.mask_value)
    return lambda x: np.where((x != value).any(axis=-1, keepdims=True), x, np.float32(0))


def _rescaling(layer: Any) -> NodeFn:
    _check_float32(layer)
    scale = np.asarray(layer.scale, np.float32)
    offset = np.asarray(layer.offset, np.float32)
    return lambda x: x * scale + offset


def _relu_layer(layer: Any) -> NodeFn:
    """ReLU, clipped at `max_value` where set; a slope or threshold has no numpy form here."""
    if layer.negative_slope or layer.threshold:
        raise Unsteppable(f"ReLU {layer.name!r} has a negative slope or a threshold")
    if layer.max_value is None:
        return _relu
    top = np.float32(layer.max_value)
    return lambda x: np.clip(x, np.float32(0), top)


def _layer_normalization(layer: Any) -> NodeFn:
    """Over the feature axis only (per step); rms_scaling has no numpy form here."""
    _check_float32(layer)
    axes = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)
    if axes != [-1] or layer.rms_scaling:
        raise Unsteppable(f"LayerNormalization {layer.name!r} over {axes} or with rms scaling")
    gamma = None if layer.gamma is None else _weight(layer.gamma)
    beta = None if layer.beta is None else _weight(layer.beta)
    epsilon = np.float32(layer.epsilon)

    def run(x: Array) -> Array:
        mean = x.mean(axis=-1, keepdims=True)
        inv = np.float32(1) / np.sqrt(np.square(x - mean).mean(axis=-1, keepdims=True) + epsilon)
        if gamma is not None:
            inv = inv * gamma
        y = x * inv - mean * inv
        return y if beta is None else y + beta

    return run


_LAYER_FORMS: dict[type, Callable[[Any], NodeFn]] = {
    _L.Dense: _dense,
    _L.Embedding: _embedding,
    _L.Rescaling: _rescaling,
    _L.Masking: _masking,
    _L.ReLU: _relu_layer,
    _L.LayerNormalization: _layer_normalization,
    _L.Activation: lambda layer: _activation(layer.activation, f"Activation {layer.name!r}"),
}


def layer_fn(layer: Any) -> NodeFn:
    """The numpy form of a layer that acts on each step alone; `Unsteppable` if none."""
    kind = type(layer)
    form = _LAYER_FORMS.get(kind)
    if form is not None:
        return form(layer)
    if isinstance(layer, IDENTITY_AT_INFERENCE):
        return _linear
    raise Unsteppable(f"{kind.__name__} {layer.name!r} has no numpy form")


NodesFn = Callable[[list[Array]], Array]  # a node's graph tensors in argument order


def node_fn(node: Node) -> NodesFn:
    """The numpy form of a per-step or static node (one output, no mask); `Unsteppable` if
    none."""
    op = node.operation
    if len(node.outputs) != 1 or node.mask is not None:
        raise Unsteppable(f"{type(op).__name__} {op.name!r} has several outputs or a mask")
    if isinstance(op, _MERGES):
        return _merge(op)
    if len(node.inputs) != 1:
        raise Unsteppable(f"{type(op).__name__} {op.name!r} takes several tensors")
    call = ops_call(op)
    fn = layer_fn(op) if call is None else _mask_op(call, node)
    return lambda xs: fn(xs[0])


_MERGES = (_L.Add, _L.Subtract, _L.Multiply, _L.Average, _L.Maximum, _L.Minimum, _L.Concatenate)


def _merge(layer: Any) -> NodesFn:
    """Keras' merge layers on equal shapes (as the model was built), in Keras' order."""
    kind = type(layer)
    if kind is _L.Concatenate:
        axis = layer.axis
        return lambda xs: np.concatenate(xs, axis=axis)
    if kind is _L.Subtract:
        return lambda xs: xs[0] - xs[1]
    pairwise = {_L.Add: np.add, _L.Average: np.add, _L.Multiply: np.multiply,
                _L.Maximum: np.maximum, _L.Minimum: np.minimum}[kind]  # fmt: skip

    def run(xs: list[Array]) -> Array:
        y = xs[0]
        for x in xs[1:]:
            y = pairwise(y, x)
        return y / np.float32(len(xs)) if kind is _L.Average else y

    return run


def _mask_op(call: OpsCall, node: Node) -> NodeFn:
    """The `keras.ops` nodes Keras records for masks: `not_equal(x, scalar)` (Embedding's
    mask_zero, Masking) and `any(..., axis)` (Masking)."""
    constants = node.constants()
    if call.name == "NotEqual" and len(constants) == 1 and np.ndim(constants[0]) == 0:
        value = constants[0]
        return lambda x: x != value
    if call.name == "Any" and call.axis is not None:
        axis = tuple(np.atleast_1d(call.axis).tolist())
        return lambda x: np.any(x, axis=axis, keepdims=call.keepdims)
    raise Unsteppable(f"keras.ops {call.name} node {node.operation.name!r} has no numpy form")


# -- recurrent cells: (x projected by the kernel, plus the input bias) and one step ---------

Cell = Callable[[Array, list[Array]], list[Array]]  # projected x_t, states -> new states


class _CellForm:
    """One recurrent cell: `project` (all new steps at once) and `step` (one step)."""

    def __init__(self, cell: Any) -> None:
        _check_float32(cell)
        self.kernel = _weight(cell.kernel)
        self.recurrent = _weight(cell.recurrent_kernel)
        self.units = int(cell.units)
        self.act = _activation(cell.activation, f"cell {cell.name!r}")

    def project(self, x: Array) -> Array:
        return x @ self.kernel

    def step(self, zx: Array, states: list[Array]) -> list[Array]:
        raise NotImplementedError


class _LSTM(_CellForm):
    def __init__(self, cell: Any) -> None:
        super().__init__(cell)
        self.bias = None if cell.bias is None else _weight(cell.bias)
        self.rec_act = _activation(cell.recurrent_activation, f"cell {cell.name!r}")

    def project(self, x: Array) -> Array:
        z = x @ self.kernel
        return z if self.bias is None else z + self.bias

    def step(self, zx: Array, states: list[Array]) -> list[Array]:
        h, c = states
        z = zx + h @ self.recurrent
        u = self.units
        gates = self.rec_act(z)  # all four gates at once; the candidate's lanes are unused
        c = gates[:, u : 2 * u] * c + gates[:, :u] * self.act(z[:, 2 * u : 3 * u])
        return [gates[:, 3 * u :] * self.act(c), c]


class _GRU(_CellForm):
    def __init__(self, cell: Any) -> None:
        super().__init__(cell)
        self.rec_act = _activation(cell.recurrent_activation, f"cell {cell.name!r}")
        self.reset_after = bool(cell.reset_after)
        bias = None if cell.bias is None else _weight(cell.bias)
        if bias is not None and self.reset_after:
            self.in_bias, self.rec_bias = bias[0], bias[1]
        else:
            self.in_bias, self.rec_bias = bias, None

    def project(self, x: Array) -> Array:
        z = x @ self.kernel
        return z if self.in_bias is None else z + self.in_bias

    def step(self, zx: Array, states: list[Array]) -> list[Array]:
        (h,) = states
        u = self.units
        if self.reset_after:  # the reset gate scales the recurrent candidate term
            inner = h @ self.recurrent
            if self.rec_bias is not None:
                inner = inner + self.rec_bias
            z, r = self._gates(zx, inner)
            rh = r * inner[:, 2 * u :]
        else:  # ... or the state before its product
            z, r = self._gates(zx, h @ self.recurrent[:, : 2 * u])
            rh = (r * h) @ self.recurrent[:, 2 * u :]
        hh = self.act(zx[:, 2 * u :] + rh)
        return [z * h + (np.float32(1) - z) * hh]

    def _gates(self, zx: Array, inner: Array) -> tuple[Array, Array]:
        u = self.units
        return self.rec_act(zx[:, :u] + inner[:, :u]), self.rec_act(
            zx[:, u : 2 * u] + inner[:, u : 2 * u]
        )


class _SimpleRNN(_CellForm):
    def __init__(self, cell: Any) -> None:
        super().__init__(cell)
        self.bias = None if cell.bias is None else _weight(cell.bias)

    def project(self, x: Array) -> Array:
        z = x @ self.kernel
        return z if self.bias is None else z + self.bias

    def step(self, zx: Array, states: list[Array]) -> list[Array]:
        return [self.act(zx + states[0] @ self.recurrent)]


_CELLS: dict[type, type[_CellForm]] = {
    _L.LSTMCell: _LSTM,
    _L.GRUCell: _GRU,
    _L.SimpleRNNCell: _SimpleRNN,
}


class _RecurrentForm:
    """A recurrent layer stepped in numpy over a chunk, from and into the carried state; with a
    mask, as `backend.rnn` does it (and ops.Recurrent): a masked step keeps the cell states and
    repeats the previous output (zeros with `zero_output_for_mask`)."""

    def __init__(self, op: Recurrent) -> None:
        node = op.node
        layer = node.operation
        form = _CELLS.get(type(layer.cell))
        if form is None:
            raise Unsteppable(f"{type(layer).__name__} {layer.name!r} has no numpy form")
        self.cell = form(layer.cell)
        self.keys = op.keys
        self.state_keys = [op.keys.cell_state(i) for i in range(2 if form is _LSTM else 1)]
        self.sequences = bool(layer.return_sequences)
        self.zero_masked = bool(layer.zero_output_for_mask)
        self.input = id(node.inputs[0])
        self.mask = None if node.mask is None else id(node.mask)

    def run(self, values: dict[int, Array], state: State, new_state: State) -> Array:
        zs = self.cell.project(values[self.input])  # [B, k, gates]: the chunk in one product
        mask = None if self.mask is None else values[self.mask]
        states = [state[key] for key in self.state_keys]
        out = state[self.keys.last_output]
        outs = []
        for t in range(zs.shape[1]):
            new = self.cell.step(zs[:, t], states)
            if mask is None:
                states, out = new, new[0]
            else:
                m = mask[:, t, np.newaxis]
                out = np.where(m, new[0], np.float32(0) if self.zero_masked else out)
                states = [np.where(m, n, s) for n, s in zip(new, states, strict=True)]
            outs.append(out)
        new_state.update(zip(self.state_keys, states, strict=True))
        new_state[self.keys.last_output] = out
        if not self.sequences:
            return out
        return outs[0][:, np.newaxis] if len(outs) == 1 else np.stack(outs, axis=1)


class _CausalConvForm:
    """A causal Conv1D over the carried window of past inputs and the new steps (ops.CausalConv):
    one product per kernel tap."""

    def __init__(self, op: CausalConv) -> None:
        layer = op.node.operation
        _check_float32(layer)
        if layer.groups != 1:
            raise Unsteppable(f"Conv1D {layer.name!r} is grouped")
        self.kernel = _weight(layer.kernel)  # [taps, in, out]
        self.bias = None if layer.bias is None else _weight(layer.bias)
        self.act = _activation(layer.activation, f"Conv1D {layer.name!r}")
        self.dilation = int(layer.dilation_rate[0])
        self.key = op.keys.window
        self.window = op.window
        self.input = id(op.node.inputs[0])

    def run(self, values: dict[int, Array], state: State, new_state: State) -> Array:
        x = values[self.input]
        cat = np.concatenate([state[self.key], x], axis=1)
        k = x.shape[1]
        y = sum(
            cat[:, tap * self.dilation : tap * self.dilation + k] @ self.kernel[tap]
            for tap in range(len(self.kernel))
        )
        if self.window:
            new_state[self.key] = cat[:, -self.window :]
        return self.act(y if self.bias is None else y + self.bias)


class NumpyProgram(StepProgram):
    """An incremental program's graph in numpy (see the module docstring)."""

    support = IncrementalProgram.support
    light = True

    def __init__(
        self, model: keras.Model, mode: Mode, graph: Graph, plan: Plan, signature: Signature
    ) -> None:
        super().__init__(model, mode, signature)
        _check_plan(plan, mode, graph)
        self.reason = f"stepped exactly: {plan.summary}; computed in numpy"
        self._init = initial_state_of(plan)
        self._input = id(graph.input)
        self._output = id(graph.output)
        self._seq = [(op.node, _seq_form(op)) for op in plan.seq_ops]
        self._static = [(node, node_fn(node)) for node in plan.static_nodes]
        self._frontier = plan.frontier

    def _fresh(self) -> State:
        return dict(self._init)

    def step(self, state: State, chunk: Chunk) -> tuple[State, np.ndarray]:
        (x,) = self._as_inputs(chunk)
        k = x.shape[1]
        new_state = dict(state)
        new_state[STEPS] = state[STEPS] + np.int32(k)
        if k == 0 and self.mode is Mode.MANY_TO_MANY_ALIGNED:
            return new_state, self._empty(batch_of(state))
        values: dict[int, Array] = {self._input: x}
        for node, form in self._seq:
            values[id(node.outputs[0])] = form.run(values, state, new_state)
        if self.mode is Mode.MANY_TO_MANY_ALIGNED:
            return new_state, _f32(values[self._output])
        return new_state, self.finish(new_state)

    def finish(self, state: State) -> np.ndarray:
        if self.mode is Mode.MANY_TO_MANY_ALIGNED:
            return self._empty(batch_of(state))
        values = {kt_id: np.asarray(read(state)) for kt_id, read in self._frontier.items()}
        for node, fn in self._static:
            values[id(node.outputs[0])] = fn([values[id(t)] for t in node.inputs])
        return _f32(values[self._output])


def _f32(y: Array) -> Array:
    return np.asarray(y, np.float32)


class _PerStepForm:
    """A per-step node: its numpy form on all new steps at once; no state."""

    def __init__(self, fn: NodesFn, node: Node) -> None:
        self.fn = fn
        self.inputs = [id(t) for t in node.inputs]

    def run(self, values: dict[int, Array], state: State, new_state: State) -> Array:
        return self.fn([values[i] for i in self.inputs])


def _seq_form(op: Any) -> _PerStepForm | _RecurrentForm | _CausalConvForm:
    if isinstance(op, Recurrent):
        return _RecurrentForm(op)
    if isinstance(op, CausalConv):
        return _CausalConvForm(op)
    if type(op) is PerStep:
        return _PerStepForm(node_fn(op.node), op.node)
    if type(op) is TimeDistributed and op.node.mask is None:  # the layer acts on every step alone
        fn = layer_fn(op.node.operation.layer)
        return _PerStepForm(lambda xs: fn(xs[0]), op.node)
    raise Unsteppable(f"{type(op).__name__} ops have no numpy form")


def _check_plan(plan: Plan, mode: Mode, graph: Graph) -> None:
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise Unsteppable("the numpy form steps models with one input and one output")
    if mode not in (Mode.MANY_TO_MANY_ALIGNED, Mode.MANY_TO_ONE):
        raise Unsteppable(f"mode '{mode.value}' has no numpy program")
    if plan.fixed_length is not None:
        raise Unsteppable("fixed-length tail windows have no numpy form")


def numpy_program(base: StepProgram) -> StepProgram:
    """`base` in numpy where every node of its graph has a numpy form; `Unsteppable` (with the
    reason) where not. Unproven: the caller proves it before use."""
    if not isinstance(base, IncrementalProgram):
        raise Unsteppable("only incremental programs have a numpy form")
    _one_blas_thread()
    return NumpyProgram(base.model, base.mode, base.graph, base.plan, base.signature)


def numpy_model(model: keras.Model, mode: Mode) -> Callable[[Array], Array]:
    """The whole model on a dense batch of sequences, in numpy: its step program fed the whole
    sequence from a fresh state (no TensorFlow call: ~4x cheaper at batch 1). `Unsteppable`
    where the model has no numpy form. Unproven: the caller proves it before use."""
    graph, plan = step_plan(model, mode)
    _one_blas_thread()
    program = NumpyProgram(model, mode, graph, plan, one_input_signature(model))

    def run(x: Array) -> Array:
        return program.step(program.initial_state(len(x)), x)[1]

    return run


def _one_blas_thread() -> None:
    """numpy's BLAS computes on the calling thread: the server's parallelism is its own
    threads, and BLAS worker threads spinning beside them on a small machine made a 500-step
    chunk ~3x slower (`bench.step_cost`). TensorFlow's kernels do not use this BLAS."""
    threadpoolctl.threadpool_limits(1, user_api="blas")
