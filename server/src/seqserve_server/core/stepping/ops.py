"""Stepped ops: how each step-aligned node of the graph computes its new steps from new input
steps plus the state it carries (see the package docstring for the terms)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import tree

from ..graph import call_op, run_node, time_distributed
from .keras_internals import Node, call_takes_training
from .state import STEPS, OpKeys, State

Values = dict[int, Any]  # KerasTensor id -> its value in the traced step


class SeqOp:
    """A node on the aligned side: maps new input steps plus state to new steps."""

    def __init__(self, node: Node, keys: OpKeys) -> None:
        self.node = node
        self.keys = keys

    def initial(self) -> State:
        """This op's part of a fresh batch-1 state."""
        return {}

    def run(self, values: Values, state: dict, new_state: dict) -> None:
        run_node(self.node, values)

    def frontier(self, aligned: bool) -> dict[int, Any]:
        """Static tensors this op provides and how to read each from the carried state
        (id -> function of the state); `aligned`: whether its output stays step-aligned."""
        return {}


class PerStep(SeqOp):
    """Time-local layer: applying it to the new steps only is exact."""


class PerStepWithStatic(SeqOp):
    """A time-local op that also reads static tensors the same at every step: [batch, 1, ...]
    ones broadcast over the new steps as they are; a `RepeatVector`'s output (`repeated`) is
    its first step repeated for the new steps."""

    def __init__(self, node: Node, keys: OpKeys, repeated: Sequence[int]) -> None:
        super().__init__(node, keys)
        self._repeated = list(repeated)
        self._aligned = next(id(kt) for kt in node.inputs if id(kt) not in self._repeated)

    def run(self, values: Values, state: dict, new_state: dict) -> None:
        if not self._repeated:
            run_node(self.node, values)
            return
        steps = tf.shape(values[self._aligned])[1]
        local = dict(values)
        for kt_id in self._repeated:
            local[kt_id] = tf.repeat(values[kt_id][:, :1], steps, axis=1)
        run_node(self.node, local)
        for kt in self.node.outputs:
            values[id(kt)] = local[id(kt)]


class TimeDistributed(SeqOp):
    """TimeDistributed: the wrapped layer on all new steps folded into the batch axis (Keras'
    own dynamic-length path is wrong, see graph.py); the per-row math is identical."""

    def run(self, values: Values, state: dict, new_state: dict) -> None:
        values[id(self.node.outputs[0])] = time_distributed(self.node, values)


class Recurrent(SeqOp):
    """Keras RNN layer run cell-by-cell from the carried cell states (mask-aware)."""

    def __init__(self, node: Node, keys: OpKeys, initial_state: bool = False) -> None:
        """`initial_state`: the layer is called with one (static tensors of the graph), which
        replaces the carried cell states where no step was fed yet."""
        super().__init__(node, keys)
        self._given_initial_state = initial_state
        layer = node.operation
        init = layer.get_initial_state(1)
        self._struct = init
        self._init = [np.asarray(keras.ops.convert_to_numpy(s)) for s in tree.flatten(init)]
        self._units = int(node.outputs[0].shape[-1])
        self._cell_kwargs = {"training": False} if call_takes_training(layer.cell) else {}

    def initial(self) -> State:
        out = {self.keys.cell_state(i): v.astype(np.float32) for i, v in enumerate(self._init)}
        out[self.keys.last_output] = np.zeros((1, self._units), np.float32)
        return out

    def run(self, values: Values, state: dict, new_state: dict) -> None:
        layer = self.node.operation
        args, kwargs = self.node.fill_in(values)
        x, mask = args[0], kwargs.get("mask")
        states = [state[self.keys.cell_state(i)] for i in range(len(self._init))]
        if self._given_initial_state:
            states = self._initial_where_new(state, kwargs.get("initial_state"), states)
        seq, last, final = self._loop(layer, x, mask, states, state[self.keys.last_output])
        for i, s in enumerate(final):
            new_state[self.keys.cell_state(i)] = s
        new_state[self.keys.last_output] = last
        values[id(self.node.outputs[0])] = seq if layer.return_sequences else last

    def _initial_where_new(self, state: dict, given: Any, carried: list) -> list:
        """The call's initial state for sessions that fed no step yet, else the carried one."""
        if given is None:
            raise ValueError(f"RNN {self.node.operation.name!r} was called without initial_state")
        fresh = tf.equal(state[STEPS], 0)[:, None]
        return [
            tf.where(fresh, tf.cast(g, c.dtype), c)
            for g, c in zip(tree.flatten(given), carried, strict=True)
        ]

    def frontier(self, aligned: bool) -> dict[int, Any]:
        """The last output (`return_sequences=False`) and, with `return_state`, the final cell
        states (e.g. an encoder handing `[h, c]` to a decoder)."""
        outs = self.node.outputs
        found = {id(kt): _reader(self.keys.cell_state(i)) for i, kt in enumerate(outs[1:])}
        if not aligned:
            found[id(outs[0])] = _reader(self.keys.last_output)
        return found

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


class CausalConv(SeqOp):
    """Causal Conv1D: keeps the last (kernel-1)*dilation inputs; zeros = causal padding."""

    def __init__(self, node: Node, keys: OpKeys) -> None:
        super().__init__(node, keys)
        op = node.operation
        self.window = (op.kernel_size[0] - 1) * op.dilation_rate[0]
        self._channels = int(node.inputs[0].shape[-1])

    def initial(self) -> State:
        return {self.keys.window: np.zeros((1, self.window, self._channels), np.float32)}

    def run(self, values: Values, state: dict, new_state: dict) -> None:
        args, kwargs = self.node.fill_in(values)
        cat = tf.concat([state[self.keys.window], args[0]], axis=1)
        # The layer's own causal padding only touches outputs of the window steps, which
        # are dropped, so the kept outputs are exactly the full-sequence ones.
        y = call_op(self.node.operation, [cat, *args[1:]], kwargs)
        values[id(self.node.outputs[0])] = y[:, self.window :]
        new_state[self.keys.window] = tf.ensure_shape(
            cat[:, -self.window :], [None, self.window, self._channels]
        )


class TailWindow(SeqOp):
    """Fixed-length transition (Cropping1D, Flatten, Reshape): buffer the last W steps.

    Only meaningful once exactly ``length`` steps were fed (the model's input length); the
    program's output is NaN otherwise.
    """

    def __init__(self, node: Node, keys: OpKeys, length: int) -> None:
        super().__init__(node, keys)
        op = node.operation
        self.length = length
        self._tail_shape = tuple(int(d) for d in node.inputs[0].shape[2:])
        if isinstance(op, keras.layers.Cropping1D):
            front, back = op.cropping
            self.window = length - front
            self._keep: int | None = length - front - back
        else:
            self.window = length
            self._keep = None

    def initial(self) -> State:
        return {self.keys.tail: np.zeros((1, self.window, *self._tail_shape), np.float32)}

    def run(self, values: Values, state: dict, new_state: dict) -> None:
        src = values[id(self.node.inputs[0])]
        cat = tf.concat([state[self.keys.tail], src], axis=1)
        new_state[self.keys.tail] = tf.ensure_shape(
            cat[:, -self.window :], [None, self.window, *self._tail_shape]
        )

    def frontier(self, aligned: bool) -> dict[int, Any]:
        """The transition's (static) output, computed from the buffer."""
        return {id(self.node.outputs[0]): self._output}

    def _output(self, state: dict) -> tf.Tensor:
        buf = state[self.keys.tail]
        if self._keep is not None:
            return buf[:, : self._keep]
        args, kwargs = self.node.fill_in({id(self.node.inputs[0]): buf})
        return call_op(self.node.operation, args, kwargs)


def _reader(key: str) -> Any:
    return lambda state: state[key]
