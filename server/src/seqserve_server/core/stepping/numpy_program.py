"""A numpy step program: an incremental program's graph computed with numpy from the weights.

Why: at batch 1 a session step is a few small matrix products (an LSTM(64) -> Dense step is
~50 µs in numpy), while a call of the traced step function costs ~1 ms of TensorFlow dispatch
and tensor conversion (`python -m bench.step_cost`). A chunk of k steps is one call: the
inputs' projection is one product, then a loop over the steps. It covers the common recurrent
stacks only (Dense, Embedding without a mask, Rescaling, activations, inference-time
identities, TimeDistributed of those, LSTM / GRU / SimpleRNN without a mask); any other node
raises `Unsteppable` and the traced program stays. The server uses it only after the same
load-time proof every step program passes (`sessions.proven_program`), else the traced one.

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
from .analysis import IDENTITY_AT_INFERENCE, Plan, Unsteppable
from .keras_internals import Node
from .ops import PerStep, Recurrent, TimeDistributed
from .programs import IncrementalProgram, StepProgram, initial_state_of, step_plan
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
    if layer.mask_zero:
        raise Unsteppable(f"Embedding {layer.name!r} masks padding (mask_zero)")
    table = _weight(layer.embeddings)
    return lambda ids: table[ids]


def _rescaling(layer: Any) -> NodeFn:
    _check_float32(layer)
    scale = np.asarray(layer.scale, np.float32)
    offset = np.asarray(layer.offset, np.float32)
    return lambda x: x * scale + offset


def layer_fn(layer: Any) -> NodeFn:
    """The numpy form of a layer that acts on each step alone; `Unsteppable` if none."""
    kind = type(layer)
    if kind is _L.Dense:
        return _dense(layer)
    if kind is _L.Embedding:
        return _embedding(layer)
    if kind is _L.Rescaling:
        return _rescaling(layer)
    if kind is _L.Activation:
        return _activation(layer.activation, f"Activation {layer.name!r}")
    if isinstance(layer, IDENTITY_AT_INFERENCE):
        return _linear
    raise Unsteppable(f"{kind.__name__} {layer.name!r} has no numpy form")


def node_fn(node: Node) -> NodeFn:
    """The numpy form of a per-step or static node with one input; `Unsteppable` if none."""
    op = node.operation
    if len(node.inputs) != 1 or len(node.outputs) != 1 or node.mask is not None:
        raise Unsteppable(f"{type(op).__name__} {op.name!r} takes several tensors or a mask")
    return layer_fn(op)


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
    """A recurrent layer stepped in numpy over a chunk, from and into the carried state."""

    def __init__(self, op: Recurrent) -> None:
        layer = op.node.operation
        form = _CELLS.get(type(layer.cell))
        if form is None or op.node.mask is not None:
            raise Unsteppable(f"{type(layer).__name__} {layer.name!r} has no numpy form")
        self.cell = form(layer.cell)
        self.keys = op.keys
        self.state_keys = [op.keys.cell_state(i) for i in range(2 if form is _LSTM else 1)]
        self.sequences = bool(layer.return_sequences)

    def run(self, x: Array, state: State, new_state: State) -> Array:
        zs = self.cell.project(x)  # [B, k, gates]: the chunk's inputs in one product
        states = [state[key] for key in self.state_keys]
        outs = []
        for t in range(zs.shape[1]):
            states = self.cell.step(zs[:, t], states)
            outs.append(states[0])
        new_state.update(zip(self.state_keys, states, strict=True))
        new_state[self.keys.last_output] = states[0]
        if not self.sequences:
            return states[0]
        return outs[0][:, np.newaxis] if len(outs) == 1 else np.stack(outs, axis=1)


class NumpyProgram(StepProgram):
    """An incremental program's graph in numpy (see the module docstring)."""

    support = IncrementalProgram.support
    light = True

    def __init__(self, model: keras.Model, mode: Mode, graph: Graph, plan: Plan) -> None:
        super().__init__(model, mode)
        _check_plan(plan, mode)
        self.reason = f"stepped exactly: {plan.summary}; computed in numpy"
        self._init = initial_state_of(plan)
        self._input = id(graph.input)
        self._output = id(graph.output)
        self._seq = [(op.node, _seq_form(op)) for op in plan.seq_ops]
        self._static = [(node, node_fn(node)) for node in plan.static_nodes]
        self._frontier = plan.frontier

    def initial_state(self, batch: int = 1) -> State:
        return {k: np.repeat(v, batch, axis=0) for k, v in self._init.items()}

    def step(self, state: State, x: np.ndarray) -> tuple[State, np.ndarray]:
        x = self._as_input(x)
        k = x.shape[1]
        new_state = dict(state)
        new_state[STEPS] = state[STEPS] + np.int32(k)
        if k == 0 and self.mode is Mode.MANY_TO_MANY_ALIGNED:
            return new_state, self._empty(batch_of(state))
        values: dict[int, Array] = {self._input: x}
        for node, form in self._seq:
            values[id(node.outputs[0])] = form.run(values[id(node.inputs[0])], state, new_state)
        if self.mode is Mode.MANY_TO_MANY_ALIGNED:
            return new_state, _f32(values[self._output])
        return new_state, self.finish(new_state)

    def finish(self, state: State) -> np.ndarray:
        if self.mode is Mode.MANY_TO_MANY_ALIGNED:
            return self._empty(batch_of(state))
        values = {kt_id: np.asarray(read(state)) for kt_id, read in self._frontier.items()}
        for node, fn in self._static:
            values[id(node.outputs[0])] = fn(values[id(node.inputs[0])])
        return _f32(values[self._output])


def _f32(y: Array) -> Array:
    return np.asarray(y, np.float32)


class _PerStepForm:
    """A per-step node: its numpy form on all new steps at once; no state."""

    def __init__(self, fn: NodeFn) -> None:
        self.fn = fn

    def run(self, x: Array, state: State, new_state: State) -> Array:
        return self.fn(x)


def _seq_form(op: Any) -> _PerStepForm | _RecurrentForm:
    if isinstance(op, Recurrent):
        return _RecurrentForm(op)
    if type(op) is PerStep:
        return _PerStepForm(node_fn(op.node))
    if type(op) is TimeDistributed and op.node.mask is None:  # the layer acts on every step alone
        return _PerStepForm(layer_fn(op.node.operation.layer))
    raise Unsteppable(f"{type(op).__name__} ops have no numpy form")


def _check_plan(plan: Plan, mode: Mode) -> None:
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
    return NumpyProgram(base.model, base.mode, base.graph, base.plan)


def numpy_model(model: keras.Model, mode: Mode) -> Callable[[Array], Array]:
    """The whole model on a dense batch of sequences, in numpy: its step program fed the whole
    sequence from a fresh state (no TensorFlow call: ~4x cheaper at batch 1). `Unsteppable`
    where the model has no numpy form. Unproven: the caller proves it before use."""
    graph, plan = step_plan(model, mode)
    _one_blas_thread()
    program = NumpyProgram(model, mode, graph, plan)

    def run(x: Array) -> Array:
        return program.step(program.initial_state(len(x)), x)[1]

    return run


def _one_blas_thread() -> None:
    """numpy's BLAS computes on the calling thread: the server's parallelism is its own
    threads, and BLAS worker threads spinning beside them on a small machine made a 500-step
    chunk ~3x slower (`bench.step_cost`). TensorFlow's kernels do not use this BLAS."""
    threadpoolctl.threadpool_limits(1, user_api="blas")
