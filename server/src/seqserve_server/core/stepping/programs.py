"""The two kinds of step program, and `build_step_program` that picks one for a model.

An `IncrementalProgram` runs the analysed graph (analysis.py) as one traced step function: O(k)
per chunk of k steps. A `RecomputeProgram` keeps the input prefix and re-runs the full model:
O(T) per chunk, for graphs with no exact incremental form. What `step` returns depends on the
mode: the new steps' outputs (aligned), the running output vector (many-to-one), nothing until
`finish` decodes the output sequence (unaligned).

A program steps the model's sequence inputs together (one time axis): a chunk is one array per
sequence input, each [B, k, features] floats or [B, k] token ids (one array alone where the model
has one sequence input). Static inputs (no time axis) are part of the state, given to
`initial_state`. Several outputs come packed along the feature axis (`Signature.split`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ..errors import Unsupported
from ..graph import Graph, GraphError, graph_of, run_node
from ..modes import Mode
from ..signature import (
    SINGLE_INPUT_NAME,
    SINGLE_OUTPUT_NAME,
    STRING,
    InputSpec,
    OutputSpec,
    Signature,
)
from .analysis import Plan, Unsteppable, analyse
from .state import (
    STEPS,
    State,
    batch_of,
    prefix_key,
    split_states,
    stack_states,
    state_specs,
    static_key,
    steps_fed,
    tile,
    to_numpy,
)

Chunk = np.ndarray | tuple[np.ndarray, ...]  # new steps: one array per sequence input
Statics = Mapping[str, np.ndarray]  # static inputs by name, each [B, ...]
Compute = Callable[[Any], np.ndarray]  # the full model on every input, in the model's order

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
    """A sequence input as a program takes it: float steps [B, k, features] (as float32) or
    tokens [B, k] (features None: the model's integer ids, or token strings)."""

    name: str
    dtype: np.dtype
    features: int | None

    @classmethod
    def of(cls, spec: InputSpec) -> StepInput:
        if spec.tokens:
            return cls(spec.name, spec.dtype, None)
        return cls(spec.name, np.dtype(np.float32), int(spec.shape[-1] or 0))

    def shape(self, batch: int | None, steps: int | None) -> list[int | None]:
        return [batch, steps] if self.features is None else [batch, steps, self.features]

    def zeros(self, batch: int, steps: int) -> np.ndarray:
        """Blank steps: zeros, or empty token strings."""
        if self.dtype == STRING:
            return np.full(self.shape(batch, steps), b"", STRING)  # type: ignore[arg-type]
        return np.zeros(self.shape(batch, steps), self.dtype)  # type: ignore[arg-type]

    def spec(self, steps: int | None) -> tf.TensorSpec:
        return tf.TensorSpec(self.shape(None, steps), tf.as_dtype(self.dtype))


def one_input_signature(model: keras.Model) -> Signature:
    """The signature of a model with one sequence input and one output (what tests and benches
    build programs of without loading a runtime)."""
    tensor, out = model.inputs[0], model.outputs[0]
    dtype = np.dtype(keras.backend.standardize_dtype(tensor.dtype))
    spec = InputSpec(SINGLE_INPUT_NAME, tuple(tensor.shape[1:]), dtype, True)
    out_dtype = np.dtype(keras.backend.standardize_dtype(out.dtype))
    return Signature((spec,), (OutputSpec(SINGLE_OUTPUT_NAME, tuple(out.shape[1:]), out_dtype),))


class StepProgram:
    """Stateful incremental evaluation of one model for streaming sessions.

    Chunks are validated by the caller (the session core), B the state's batch; `finish` after
    the model's fixed length, if any. Where the model is undefined (a prefix of a fixed-length
    model) outputs are NaN.
    """

    support: SessionSupport
    reason = ""
    light = False  # cheap enough at a few steps to compute on the caller's thread

    def __init__(self, model: keras.Model, mode: Mode, signature: Signature) -> None:
        self.model = model
        self.mode = mode
        self.signature = signature
        self.step_inputs = tuple(StepInput.of(s) for s in signature.sequence_inputs)
        self.fixed_length: int | None = signature.fixed_steps
        shape = signature.packed_shape
        self._out_shape = tuple(int(d or 0) for d in shape[0 if mode is Mode.MANY_TO_ONE else 1 :])
        self._undefined_shape = tuple(int(d or 0) for d in shape)  # time None: no steps
        self._statics = {
            s.name: np.zeros((1, *(int(d or 0) for d in s.shape)), s.dtype)
            for s in signature.static_inputs
        }

    def initial_state(self, batch: int = 1, statics: Statics | None = None) -> State:
        """A fresh state of `batch` sessions; `statics`: the static inputs by name, each
        [batch, ...] (zeros where not given: what warm-up and tracing feed)."""
        state = tile(self._fresh(), batch)
        for name, zeros in self._statics.items():
            given = None if statics is None else statics.get(name)
            value = np.repeat(zeros, batch, axis=0) if given is None else given
            state[static_key(name)] = np.asarray(value).astype(zeros.dtype, copy=False)
        return state

    def _fresh(self) -> State:
        """This program's own part of a batch-1 state (without static inputs)."""
        raise NotImplementedError

    def step(self, state: State, x: Chunk) -> tuple[State, np.ndarray]:
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

    def zeros(self, batch: int, steps: int) -> Chunk:
        """A chunk of `steps` zero steps of every sequence input."""
        return _chunk(tuple(s.zeros(batch, steps) for s in self.step_inputs))

    def _as_inputs(self, x: Chunk) -> tuple[np.ndarray, ...]:
        arrays = x if isinstance(x, tuple) else (x,)
        return tuple(
            np.asarray(a).astype(s.dtype, copy=False)
            for a, s in zip(arrays, self.step_inputs, strict=True)
        )

    def _empty(self, batch: int) -> np.ndarray:
        return np.zeros((batch, 0, *self._out_shape), np.float32)

    def _undefined(self, batch: int) -> np.ndarray:
        return np.full((batch, *self._undefined_shape), np.nan, np.float32)


def _chunk(arrays: tuple[np.ndarray, ...]) -> Chunk:
    return arrays[0] if len(arrays) == 1 else arrays


def steps_in(x: Chunk) -> int:
    """How many steps a chunk holds."""
    return int((x[0] if isinstance(x, tuple) else x).shape[1])


class IncrementalProgram(StepProgram):
    """Exact O(k) stepping of a model graph; one compiled step function per program."""

    support = SessionSupport.INCREMENTAL

    def __init__(self, model: keras.Model, mode: Mode, graph: Graph, plan: Plan,
                 signature: Signature) -> None:  # fmt: skip
        super().__init__(model, mode, signature)
        self.fixed_length = plan.fixed_length
        self.reason = "stepped exactly: " + plan.summary
        self.graph = graph
        self.plan = plan
        self._init = initial_state_of(plan)
        self._sequence_ids = [id(kt) for kt in _sequence_tensors(model, signature)]
        spec = state_specs(self.initial_state(1))
        # Two traces: any k (while_loop over steps) and k=1 (straight-line, the common case).
        # Concrete functions are called directly: cheaper than tf.function dispatch.
        steps_any = [s.spec(None) for s in self.step_inputs]
        steps_one = [s.spec(1) for s in self.step_inputs]
        self._step_any = _concrete(self._step_graph, [spec, *steps_any])
        self._step_one = _concrete(self._step_graph, [spec, *steps_one])
        self._finish_fn = _concrete(lambda state: self._static_graph(state), [spec])
        for k in (1, 2):  # warm up both traces
            self.step(self.initial_state(1), self.zeros(1, k))

    def _fresh(self) -> State:
        return dict(self._init)

    def _step_graph(self, state: dict, *xs: tf.Tensor) -> tuple[dict, tf.Tensor]:
        values: dict[int, Any] = dict(zip(self._sequence_ids, xs, strict=True))
        self._early(state, values)
        new_state = dict(state)
        new_state[STEPS] = state[STEPS] + tf.shape(xs[0])[1]
        for op in self.plan.seq_ops:
            op.run(values, state, new_state)
        if self.mode is Mode.MANY_TO_MANY_ALIGNED:
            y = self._packed(values)
        elif self.mode is Mode.MANY_TO_ONE:
            y = self._static_graph(new_state, values)
        else:
            y = tf.zeros([tf.shape(xs[0])[0], 0, *self._out_shape])
        return new_state, y

    def _early(self, state: dict, values: dict[int, Any]) -> None:
        """Static inputs from the state, and what depends on them alone (analysis.py)."""
        for kt_id, key in self.plan.static_inputs.items():
            values[kt_id] = state[key]
        for node in self.plan.early_nodes:
            run_node(node, values)

    def _static_graph(self, state: dict, values: dict[int, Any] | None = None) -> tf.Tensor:
        """Evaluate the static part of the graph from the frontier read out of the state
        (`values`: the step's own, early nodes already computed)."""
        if self.plan.output_is_seq:
            return tf.zeros([tf.shape(state[STEPS])[0], 0, *self._out_shape])
        if values is None:
            values = {}
            self._early(state, values)
        values.update((kt_id, read(state)) for kt_id, read in self.plan.frontier.items())
        for node in self.plan.static_nodes:
            run_node(node, values)
        y = self._packed(values)
        if self.fixed_length is not None:
            ok = tf.equal(state[STEPS], self.fixed_length)
            ok = tf.reshape(ok, [-1, *([1] * (len(y.shape) - 1))])
            y = tf.where(ok, y, tf.fill(tf.shape(y), np.float32("nan")))
        return y

    def _packed(self, values: dict[int, Any]) -> tf.Tensor:
        """The graph's outputs, several packed along the feature axis."""
        outs = [tf.cast(values[id(kt)], tf.float32) for kt in self.graph.outputs]
        return outs[0] if len(outs) == 1 else tf.concat(outs, axis=-1)

    def step(self, state: State, x: Chunk) -> tuple[State, np.ndarray]:
        xs = self._as_inputs(x)
        if xs[0].shape[1] == 0:
            return state, self._no_new_steps(state)
        step_fn = self._step_one if xs[0].shape[1] == 1 else self._step_any
        new_state, y = step_fn(state, *xs)
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

    def __init__(self, model: keras.Model, mode: Mode, signature: Signature, reason: str,
                 compute: Compute | None = None) -> None:  # fmt: skip
        """`compute`: the full model on a dense batch, one array per input in the model's
        order (the server passes its proven path); by default Keras' call traced with dynamic
        batch and time axes (one input)."""
        super().__init__(model, mode, signature)
        self.reason = reason
        if compute is None:
            spec = self.step_inputs[0].spec(self.fixed_length)
            run = tf.function(lambda x: model(x, training=False), [spec]).get_concrete_function()
            compute = lambda x: run(tf.constant(x)).numpy()  # noqa: E731
        self._compute = compute
        warm = self.initial_state(1)
        for s in self.step_inputs:
            warm[prefix_key(s.name)] = s.zeros(1, self.fixed_length or 1)
        self._outputs(warm)

    def _fresh(self) -> State:
        state = steps_fed(1)
        for s in self.step_inputs:
            state[prefix_key(s.name)] = s.zeros(1, 0)
        return state

    def _outputs(self, state: State) -> np.ndarray | None:
        """Full-model output on the prefix in `state`, or None where the model is undefined."""
        steps = int(state[prefix_key(self.step_inputs[0].name)].shape[1])
        if steps == 0 or self.fixed_length not in (None, steps):
            return None
        arrays = tuple(
            state[prefix_key(s.name)] if s.sequence else state[static_key(s.name)]
            for s in self.signature.inputs
        )
        return np.asarray(self._compute(_chunk(arrays)), np.float32)

    def step(self, state: State, x: Chunk) -> tuple[State, np.ndarray]:
        """Append `x` to the prefix and recompute the output the mode asks for."""
        xs = self._as_inputs(x)
        new_state = dict(state)
        for s, new in zip(self.step_inputs, xs, strict=True):
            key = prefix_key(s.name)
            new_state[key] = np.concatenate([state[key], new], axis=1)
        batch, k = xs[0].shape[:2]
        new_state[STEPS] = state[STEPS] + np.int32(k)
        aligned = self.mode is Mode.MANY_TO_MANY_ALIGNED
        if self.mode is Mode.MANY_TO_MANY_UNALIGNED or (k == 0 and aligned):
            return new_state, self._empty(batch)
        y = self._outputs(new_state)
        if aligned:
            if y is None:
                return new_state, np.full((batch, k, *self._out_shape), np.nan, np.float32)
            return new_state, y[:, -k:]
        return new_state, self._undefined(batch) if y is None else y

    def finish(self, state: State) -> np.ndarray:
        if self.mode is Mode.MANY_TO_MANY_ALIGNED:
            return self._empty(batch_of(state))
        y = self._outputs(state)
        return self._undefined(batch_of(state)) if y is None else y


def build_step_program(
    model: keras.Model,
    mode: Mode,
    compute: Compute | None = None,
    incremental: bool = True,
    signature: Signature | None = None,
) -> StepProgram:
    """The incremental program of `model` under `mode` where its graph allows one, else the
    recompute program (through `compute`, see `RecomputeProgram`); `incremental=False` asks for
    recompute at once. `signature`: the model's (the runtime's), by default that of a model with
    one sequence input and one output. Raises `Unsupported` for a model that cannot hold a
    session at all."""
    signature = signature or one_input_signature(model)
    _check_model(model, mode, signature)
    if not incremental:
        return RecomputeProgram(model, mode, signature, "recompute requested", compute)
    try:
        return _incremental(model, mode, signature)
    except Unsteppable as exc:
        return RecomputeProgram(model, mode, signature, str(exc), compute)


def _check_model(model: keras.Model, mode: Mode, signature: Signature) -> None:
    if mode in _NO_SEQUENCE:
        raise Unsupported(f"sessions are unsupported for mode '{mode.value}': {_NO_SEQUENCE[mode]}")
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        raise Unsupported("model has no symbolic inputs/outputs (not built?)")
    if signature.text_inputs:
        raise Unsupported(
            "a whole-text input is tokenized inside the model: it has no steps a session could "
            "feed (send the text so far to Predict; token strings per step, an input of shape "
            "(steps,), step in sessions)"
        )
    if any(o.dtype == STRING for o in signature.outputs):
        raise Unsupported("sessions do not yet serve string outputs; Predict serves them")
    sequences = signature.sequence_inputs
    if not sequences:
        raise Unsupported("the model has no sequence input to feed step by step")
    if len(sequences) > 1 and not signature.equal_lengths:
        names = ", ".join(s.name for s in sequences)
        raise Unsupported(
            f"the sequence inputs {names} may differ in length (different time axes, e.g. an "
            "encoder's and a decoder's): they have no single step order to feed them in; "
            "Predict and PredictStream serve the model"
        )
    for spec in sequences:
        if not spec.tokens and len(spec.shape) != 2:
            raise Unsupported(
                f"sessions need [batch, time, features] or [batch, time] token id inputs; "
                f"input {spec.name} is [batch, {', '.join(map(str, spec.shape))}]"
            )
    want = 1 if mode is Mode.MANY_TO_ONE else 2
    if len(signature.outputs[0].shape) != want:
        raise Unsupported(
            f"mode '{mode.value}' needs a rank-{want + 1} output, model gives "
            f"{[None, *signature.outputs[0].shape]}"
        )


def _sequence_tensors(model: keras.Model, signature: Signature) -> list[Any]:
    """The model's input tensors of its sequence inputs, in the signature's order."""
    return [kt for kt, s in zip(model.inputs, signature.inputs, strict=True) if s.sequence]


def initial_state_of(plan: Plan) -> State:
    """A fresh batch-1 state of a program stepping `plan` (without static inputs)."""
    init: State = steps_fed(1)
    for op in plan.seq_ops:
        init.update(op.initial())
    return init


def step_plan(
    model: keras.Model, mode: Mode, signature: Signature | None = None
) -> tuple[Graph, Plan]:
    """The model's graph and how to step it under `mode`; `Unsteppable` with the reason."""
    signature = signature or one_input_signature(model)
    try:
        graph = graph_of(model, several_inputs=True, several_outputs=True)
    except GraphError as exc:
        raise Unsteppable(str(exc)) from exc
    statics = {
        id(kt): static_key(s.name)
        for kt, s in zip(model.inputs, signature.inputs, strict=True)
        if not s.sequence
    }
    plan = analyse(graph, statics)
    if plan.output_is_seq != (mode is Mode.MANY_TO_MANY_ALIGNED):
        where = "aligned with" if plan.output_is_seq else "not aligned with"
        raise Unsteppable(f"model output is {where} the input steps but mode is '{mode.value}'")
    return graph, plan


def _incremental(model: keras.Model, mode: Mode, signature: Signature) -> IncrementalProgram:
    graph, plan = step_plan(model, mode, signature)
    try:
        return IncrementalProgram(model, mode, graph, plan, signature)
    except Exception as exc:  # tracing an exotic layer failed: recompute is still exact
        raise Unsteppable(f"tracing the step function failed: {exc!r}"[:300]) from exc


def _concrete(fn: Callable, specs: list) -> Any:
    """Traced without autograph: the step graph's Python branches on static facts only (its
    loops are explicit `tf.while_loop`s), and converting it was ~80% of building a program
    (4.2 -> 2.1 s CPU for the bundled models); the proof checks the result as before."""
    return tf.function(fn, input_signature=specs, autograph=False).get_concrete_function()
