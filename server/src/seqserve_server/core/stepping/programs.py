"""The two kinds of step program, and `build_step_program` that picks one for a model.

An `IncrementalProgram` runs the analysed graph (analysis.py) as one traced step function: O(k)
per chunk of k steps. A `RecomputeProgram` keeps the input prefix and re-runs the full model:
O(T) per chunk, for graphs with no exact incremental form. What `step` returns depends on the
mode: the new steps' outputs (aligned), the running output vector (many-to-one), nothing until
`finish` decodes the output sequence (unaligned).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ..errors import Unsupported
from ..graph import Graph, GraphError, graph_of, run_node
from ..modes import Mode
from .analysis import Plan, Unsteppable, analyse
from .state import (
    PREFIX,
    STEPS,
    State,
    batch_of,
    split_states,
    stack_states,
    state_specs,
    steps_fed,
    tile,
    to_numpy,
)

Compute = Callable[[np.ndarray], np.ndarray]

_NO_SEQUENCE = {
    Mode.ONE_TO_ONE: "the model maps one input vector to one output; there is no sequence to "
    "stream, so a plain predict call is the whole computation",
    Mode.ONE_TO_MANY: "the model expands one input vector into a sequence; its input is not a "
    "sequence that could arrive a few steps at a time",
}


class SessionSupport(str, enum.Enum):
    """How a model's sessions are computed: by a program of that kind, or not at all."""

    UNSUPPORTED = "unsupported"
    INCREMENTAL = "incremental"
    RECOMPUTE = "recompute"


@dataclass(frozen=True)
class StepInput:
    """A program's input: float steps [B, k, features] or token ids [B, k] (features None)."""

    dtype: np.dtype
    features: int | None

    @classmethod
    def of(cls, model: keras.Model) -> StepInput:
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


class StepProgram:
    """Stateful incremental evaluation of one model for streaming sessions.

    Chunks are validated by the caller (the session core): [B, k, features] float steps or
    [B, k] token ids, B the state's batch; `finish` after the model's fixed length, if any.
    Where the model is undefined (a prefix of a fixed-length model) outputs are NaN.
    """

    support: SessionSupport
    reason = ""
    light = False  # cheap enough at a few steps to compute on the caller's thread

    def __init__(self, model: keras.Model, mode: Mode) -> None:
        self.model = model
        self.mode = mode
        self.step_input = StepInput.of(model)
        self.n_features = self.step_input.features
        self.input_dtype = self.step_input.dtype
        self.fixed_length: int | None = None
        shape = model.outputs[0].shape
        self._out_shape = tuple(int(d) for d in shape[1 if mode is Mode.MANY_TO_ONE else 2 :])
        self._undefined_shape = tuple(int(d or 0) for d in shape[1:])  # time None: no steps

    def initial_state(self, batch: int = 1) -> State:
        raise NotImplementedError

    def step(self, state: State, x: np.ndarray) -> tuple[State, np.ndarray]:
        """Consume the chunk `x`; the new state and the output the mode gives for it."""
        raise NotImplementedError

    def finish(self, state: State) -> np.ndarray:
        """The output once the input is complete: decoded sequence (unaligned), running vector
        (many-to-one), nothing (aligned: every step's output was given by `step`)."""
        raise NotImplementedError

    @staticmethod
    def stack(states: Sequence[State]) -> State:
        """Merge sessions along the batch axis; see `state.stack_states`."""
        return stack_states(states)

    @staticmethod
    def split(state: State) -> list[State]:
        """Back to batch-1 states; see `state.split_states`."""
        return split_states(state)

    def _as_input(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x).astype(self.input_dtype, copy=False)

    def _empty(self, batch: int) -> np.ndarray:
        return np.zeros((batch, 0, *self._out_shape), np.float32)

    def _undefined(self, batch: int) -> np.ndarray:
        return np.full((batch, *self._undefined_shape), np.nan, np.float32)


class IncrementalProgram(StepProgram):
    """Exact O(k) stepping of a model graph; one compiled step function per program."""

    support = SessionSupport.INCREMENTAL

    def __init__(self, model: keras.Model, mode: Mode, graph: Graph, plan: Plan) -> None:
        super().__init__(model, mode)
        self.fixed_length = plan.fixed_length
        self.reason = "stepped exactly: " + plan.summary
        self.graph = graph
        self.plan = plan
        self._init = initial_state_of(plan)
        spec = state_specs(self._init)
        # Two traces: any k (while_loop over steps) and k=1 (straight-line, the common case).
        # Concrete functions are called directly: cheaper than tf.function dispatch.
        self._step_any = _concrete(self._step_graph, spec, self.step_input.spec(None))
        self._step_one = _concrete(self._step_graph, spec, self.step_input.spec(1))
        self._finish_fn = tf.function(self._static_graph, autograph=False).get_concrete_function(
            spec
        )
        for k in (1, 2):  # warm up both traces
            self.step(self.initial_state(1), self.step_input.zeros(1, k))

    def initial_state(self, batch: int = 1) -> State:
        return tile(self._init, batch)

    def _step_graph(self, state: dict, x: tf.Tensor) -> tuple[dict, tf.Tensor]:
        values: dict[int, Any] = {id(self.graph.input): x}
        new_state = dict(state)
        new_state[STEPS] = state[STEPS] + tf.shape(x)[1]
        for op in self.plan.seq_ops:
            op.run(values, state, new_state)
        if self.mode is Mode.MANY_TO_MANY_ALIGNED:
            y = values[id(self.graph.output)]
        elif self.mode is Mode.MANY_TO_ONE:
            y = self._static_graph(new_state)
        else:
            y = tf.zeros([tf.shape(x)[0], 0, *self._out_shape])
        return new_state, y

    def _static_graph(self, state: dict) -> tf.Tensor:
        """Evaluate the static part of the graph from the frontier read out of the state."""
        if self.plan.output_is_seq:
            return tf.zeros([tf.shape(state[STEPS])[0], 0, *self._out_shape])
        values = {kt_id: read(state) for kt_id, read in self.plan.frontier.items()}
        for node in self.plan.static_nodes:
            run_node(node, values)
        y = tf.cast(values[id(self.graph.output)], tf.float32)
        if self.fixed_length is not None:
            ok = tf.equal(state[STEPS], self.fixed_length)
            ok = tf.reshape(ok, [-1, *([1] * (len(y.shape) - 1))])
            y = tf.where(ok, y, tf.fill(tf.shape(y), np.float32("nan")))
        return y

    def step(self, state: State, x: np.ndarray) -> tuple[State, np.ndarray]:
        x = self._as_input(x)
        if x.shape[1] == 0:
            return state, self._no_new_steps(state)
        step_fn = self._step_one if x.shape[1] == 1 else self._step_any
        new_state, y = step_fn(state, x)
        return to_numpy(new_state), y.numpy()

    def _no_new_steps(self, state: State) -> np.ndarray:
        if self.mode is Mode.MANY_TO_ONE:
            return self._finish_fn(state).numpy()
        return self._empty(batch_of(state))

    def finish(self, state: State) -> np.ndarray:
        if self.mode is Mode.MANY_TO_MANY_ALIGNED:
            return self._empty(batch_of(state))
        return self._finish_fn(state).numpy()


class RecomputeProgram(StepProgram):
    """Fallback: keep the input prefix and re-run a compiled full-model function (O(T)/step).

    States of different prefix lengths cannot be stacked, so the caller batches only sessions
    with equal prefix length (equal state shapes), or steps them one by one.
    """

    support = SessionSupport.RECOMPUTE

    def __init__(
        self, model: keras.Model, mode: Mode, reason: str, compute: Compute | None = None
    ) -> None:
        """`compute`: the full model on a dense batch (the server passes its proven path);
        by default Keras' call traced with dynamic batch and time axes."""
        super().__init__(model, mode)
        self.reason = reason
        length = model.inputs[0].shape[1]
        self.fixed_length = None if length is None else int(length)
        if compute is None:
            spec = self.step_input.spec(self.fixed_length)
            run = tf.function(lambda x: model(x, training=False), [spec]).get_concrete_function()
            compute = lambda x: run(tf.constant(x)).numpy()  # noqa: E731
        self._compute = compute
        self._compute(self.step_input.zeros(1, self.fixed_length or 1))

    def initial_state(self, batch: int = 1) -> State:
        return {PREFIX: self.step_input.zeros(batch, 0), **steps_fed(batch)}

    def _outputs(self, prefix: np.ndarray) -> np.ndarray | None:
        """Full-model output on the prefix, or None where the model is undefined (length)."""
        if prefix.shape[1] == 0 or self.fixed_length not in (None, prefix.shape[1]):
            return None
        return np.asarray(self._compute(prefix), np.float32)

    def step(self, state: State, x: np.ndarray) -> tuple[State, np.ndarray]:
        """Append `x` to the prefix and recompute the output the mode asks for."""
        x = self._as_input(x)
        prefix = np.concatenate([state[PREFIX], x], axis=1)
        new_state = {PREFIX: prefix, STEPS: state[STEPS] + np.int32(x.shape[1])}
        batch, k = x.shape[:2]
        aligned = self.mode is Mode.MANY_TO_MANY_ALIGNED
        if self.mode is Mode.MANY_TO_MANY_UNALIGNED or (k == 0 and aligned):
            return new_state, self._empty(batch)
        y = self._outputs(prefix)
        if aligned:
            if y is None:
                return new_state, np.full((batch, k, *self._out_shape), np.nan, np.float32)
            return new_state, y[:, -k:]
        return new_state, self._undefined(batch) if y is None else y

    def finish(self, state: State) -> np.ndarray:
        if self.mode is Mode.MANY_TO_MANY_ALIGNED:
            return self._empty(batch_of(state))
        y = self._outputs(state[PREFIX])
        return self._undefined(batch_of(state)) if y is None else y


def build_step_program(
    model: keras.Model, mode: Mode, compute: Compute | None = None, incremental: bool = True
) -> StepProgram:
    """The incremental program of `model` under `mode` where its graph allows one, else the
    recompute program (through `compute`, see `RecomputeProgram`); `incremental=False` asks for
    recompute at once. Raises `Unsupported` for a model that cannot hold a session at all."""
    _check_model(model, mode)
    if not incremental:
        return RecomputeProgram(model, mode, "recompute requested", compute)
    try:
        return _incremental(model, mode)
    except Unsteppable as exc:
        return RecomputeProgram(model, mode, str(exc), compute)


def _check_model(model: keras.Model, mode: Mode) -> None:
    if mode in _NO_SEQUENCE:
        raise Unsupported(f"sessions are unsupported for mode '{mode.value}': {_NO_SEQUENCE[mode]}")
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        raise Unsupported("model has no symbolic inputs/outputs (not built?)")
    if len(inputs) != 1 or len(outputs) != 1:
        raise Unsupported("sessions need a single sequence input and output")
    if len(inputs[0].shape) != 3 and StepInput.of(model).features is not None:
        raise Unsupported(
            "sessions need a [batch, time, features] or [batch, time] token id input, got "
            f"{inputs[0].shape}"
        )
    want = 2 if mode is Mode.MANY_TO_ONE else 3
    if len(outputs[0].shape) != want:
        raise Unsupported(
            f"mode '{mode.value}' needs a rank-{want} output, model gives {outputs[0].shape}"
        )


def initial_state_of(plan: Plan) -> State:
    """A fresh batch-1 state of a program stepping `plan`."""
    init: State = steps_fed(1)
    for op in plan.seq_ops:
        init.update(op.initial())
    return init


def step_plan(model: keras.Model, mode: Mode) -> tuple[Graph, Plan]:
    """The model's graph and how to step it under `mode`; `Unsteppable` with the reason."""
    try:
        graph = graph_of(model)
    except GraphError as exc:
        raise Unsteppable(str(exc)) from exc
    plan = analyse(graph)
    if plan.output_is_seq != (mode is Mode.MANY_TO_MANY_ALIGNED):
        where = "aligned with" if plan.output_is_seq else "not aligned with"
        raise Unsteppable(f"model output is {where} the input steps but mode is '{mode.value}'")
    return graph, plan


def _incremental(model: keras.Model, mode: Mode) -> IncrementalProgram:
    graph, plan = step_plan(model, mode)
    try:
        return IncrementalProgram(model, mode, graph, plan)
    except Exception as exc:  # tracing an exotic layer failed: recompute is still exact
        raise Unsteppable(f"tracing the step function failed: {exc!r}"[:300]) from exc


def _concrete(fn: Callable, spec: dict, x_spec: tf.TensorSpec) -> Any:
    """Traced without autograph: the step graph's Python branches on static facts only (its
    loops are explicit `tf.while_loop`s), and converting it was ~80% of building a program
    (4.2 -> 2.1 s CPU for the bundled models); the proof checks the result as before."""
    return tf.function(fn, input_signature=[spec, x_spec], autograph=False).get_concrete_function()
