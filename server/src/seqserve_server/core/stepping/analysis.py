"""Graph analysis: which nodes are step-aligned, how each is stepped, and the frontier.

Nodes are visited in topological order. The sequence inputs are aligned; static inputs (no time
axis, given once per session) are read from the state. A node whose inputs are all static is
static: "early" when it depends on static inputs and constants only (computed before the steps,
so stepped ops can read it), else computed from the frontier after them. A node whose inputs are
aligned becomes a stepped op (ops.py) if it has an exact incremental form; early static tensors
may join it where that stays exact (a recurrent layer's initial state; a per-step op's operand
that is the same at every step). Any other node makes the graph unsteppable, and the reason is
what the recompute fallback reports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ..graph import Graph
from .keras_internals import Node, ops_call
from .ops import (
    CausalConv,
    PerStep,
    PerStepWithStatic,
    Recurrent,
    SeqOp,
    TailWindow,
    TimeDistributed,
)
from .state import OpKeys


class Unsteppable(Exception):
    """The graph cannot be stepped exactly; the message is the reason (the fallback's)."""


@dataclass
class Plan:
    """What the analysis found: stepped ops in order, static nodes in order, and the frontier
    (each static tensor read from the state: id -> function of the state)."""

    seq_ops: list[SeqOp] = field(default_factory=list)
    early_nodes: list[Node] = field(default_factory=list)  # static inputs/constants only
    static_nodes: list[Node] = field(default_factory=list)
    frontier: dict[int, Callable[[dict], tf.Tensor]] = field(default_factory=dict)
    output_is_seq: bool = False
    static_inputs: dict[int, str] = field(default_factory=dict)  # tensor id -> state key
    fixed_length: int | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        """How many ops of each kind are stepped, e.g. "1 PerStep, 2 Recurrent"."""
        return ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts.items()))


_L = keras.layers
# Layers that pass their input through unchanged at inference (training=False).
IDENTITY_AT_INFERENCE: tuple[type, ...] = (
    _L.Dropout,
    _L.SpatialDropout1D,
    _L.GaussianNoise,
    _L.GaussianDropout,
    _L.AlphaDropout,
    _L.Identity,
)
_PER_STEP_LAYERS: tuple[type, ...] = (
    _L.Dense,
    _L.Embedding,
    _L.Activation,
    *IDENTITY_AT_INFERENCE,
    _L.ActivityRegularization,
    _L.Rescaling,
    _L.Masking,
    _L.ReLU,
    _L.LeakyReLU,
    _L.ELU,
)
_LOOKUPS: tuple[type, ...] = (_L.StringLookup, _L.IntegerLookup, _L.Hashing)
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


def analyse(graph: Graph, static_inputs: dict[int, str] | None = None) -> Plan:
    """Classify every node of `graph`; raises `Unsteppable` naming the first node that is not.
    `static_inputs`: the inputs without a time axis (tensor id -> their state key); every other
    input of the graph is a sequence input."""
    statics = dict(static_inputs or {})
    plan = Plan(static_inputs=statics)
    aligned: set[int] = {id(kt) for kt in graph.inputs if id(kt) not in statics}
    early: set[int] = set(statics)
    static: set[int] = set(statics)
    made_by: dict[int, Node] = {}
    for i, node in enumerate(graph.nodes):
        ins = [id(kt) for kt in node.inputs]
        outs = {id(kt) for kt in node.outputs}
        if all(t in static for t in ins):  # includes constant-only nodes
            if all(t in early for t in ins):
                plan.early_nodes.append(node)
                early.update(outs)
                made_by.update((t, node) for t in outs)
            else:
                plan.static_nodes.append(node)
            static.update(outs)
            continue
        joined = [kt for kt in node.inputs if id(kt) not in aligned]
        if any(id(kt) not in early for kt in joined):
            raise Unsteppable(
                f"{_describe(node.operation)} mixes step-aligned and whole-sequence tensors"
            )
        keys = OpKeys.of(i, node.operation.name)
        if joined:
            op, stays_aligned = _stepped_with_static(node, keys, joined, made_by)
        else:
            op, stays_aligned = _stepped(node, keys, plan)
        plan.seq_ops.append(op)
        kind = type(op).__name__
        plan.counts[kind] = plan.counts.get(kind, 0) + 1
        if stays_aligned:
            aligned.add(id(node.outputs[0]))
        for kt_id, read in op.frontier(stays_aligned).items():
            static.add(kt_id)
            plan.frontier[kt_id] = read
    kinds = {id(kt) in aligned for kt in graph.outputs}
    if len(kinds) > 1:
        raise Unsteppable("some outputs are step-aligned and others are not")
    plan.output_is_seq = kinds.pop()
    return plan


def _stepped_with_static(
    node: Node, keys: OpKeys, joined: list[Any], made_by: dict[int, Node]
) -> tuple[SeqOp, bool]:
    """A node on the aligned side that also reads early static tensors (`joined`): a recurrent
    layer's initial state, or the operand of a per-step op that is the same at every step (no
    time axis of its own, [batch, 1, ...], or a `RepeatVector` of a static tensor)."""
    op = node.operation
    if isinstance(op, _L.RNN):
        if op.go_backwards:
            raise Unsteppable(f"{_describe(op)} runs backwards (go_backwards=True)")
        if node.mask is not None and any(kt is node.mask for kt in joined):
            raise Unsteppable(f"{_describe(op)} takes a mask that is not step-aligned")
        return Recurrent(node, keys, initial_state=True), bool(op.return_sequences)
    if len(node.outputs) != 1 or not _is_per_step(node):
        raise Unsteppable(
            f"{_describe(op)} combines step-aligned tensors with a static one in a way that "
            "has no exact incremental form"
        )
    repeated = []
    for kt in joined:
        maker = made_by.get(id(kt))
        if maker is not None and isinstance(maker.operation, _L.RepeatVector):
            repeated.append(id(kt))
        elif len(kt.shape) < 3 or kt.shape[1] != 1:
            raise Unsteppable(
                f"{_describe(op)} reads a static tensor of shape {tuple(kt.shape)} that may "
                "differ from step to step"
            )
    return PerStepWithStatic(node, keys, repeated), True


def _stepped(node: Node, keys: OpKeys, plan: Plan) -> tuple[SeqOp, bool]:
    """The stepped op for a node whose inputs are all aligned, and whether it stays aligned."""
    op = node.operation
    if isinstance(op, _L.RNN):
        if op.go_backwards:
            raise Unsteppable(f"{_describe(op)} runs backwards (go_backwards=True)")
        if any(id(kt) != id(node.mask) for kt in node.inputs[1:]):
            raise Unsteppable(f"{_describe(op)} takes graph tensors besides its input/mask")
        return Recurrent(node, keys), bool(op.return_sequences)
    if len(node.outputs) != 1:
        raise Unsteppable(f"{_describe(op)} has several outputs on the stepped path")
    if isinstance(op, _L.TimeDistributed):
        return TimeDistributed(node, keys), True
    if _is_per_step(node):
        return PerStep(node, keys), True
    if isinstance(op, _L.Conv1D) and op.padding == "causal":
        if op.strides != (1,) or op.data_format != "channels_last":
            raise Unsteppable(f"{_describe(op)} is strided or channels_first")
        return CausalConv(node, keys), True
    if isinstance(op, _L.Cropping1D | _L.Flatten | _L.Reshape):
        length = _fixed_length_of(node)
        if plan.fixed_length not in (None, length):
            raise Unsteppable("tail windows of different fixed lengths")
        plan.fixed_length = length
        return TailWindow(node, keys, length), False
    raise Unsteppable(f"{_describe(op)} is not steppable over time (no exact incremental form)")


def _is_per_step(node: Node) -> bool:
    """True when the op acts on each time step independently (time axis = 1)."""
    op = node.operation
    rank = len(node.inputs[0].shape)
    if isinstance(op, _PER_STEP_LAYERS + _ELEMENTWISE_MERGES):
        return True
    if isinstance(op, _LOOKUPS):  # token by token, as long as each maps to one index
        return getattr(op, "output_mode", "int") == "int"
    if isinstance(op, _AXIS_LAYERS):
        axes = _positive_axes(getattr(op, "axis", None), rank)
        # Normalization(axis=None) uses scalar statistics: still position independent.
        return isinstance(op, _L.Normalization) if axes is None else 1 not in axes
    if isinstance(op, _L.Concatenate):
        return bool(op.axis % rank >= 2)
    if isinstance(op, _L.Conv1D) and op.kernel_size == (1,) and op.strides == (1,):
        return bool(op.data_format == "channels_last")
    call = ops_call(op)
    if call is None:
        return False
    if call.name in _ELEMENTWISE_OPS:
        scalars_only = all(np.ndim(a) == 0 or a is None for a in node.constants())
        same_rank = len({len(t.shape) for t in node.inputs}) == 1
        return scalars_only and same_rank
    if call.name in _REDUCE_OPS:
        axes = _positive_axes(call.axis, rank)
        return axes is not None and min(axes) >= 2
    return False


def _positive_axes(axis: Any, rank: int) -> set[int] | None:
    if axis is None:
        return None
    axes = [axis] if isinstance(axis, int) else list(axis)
    return {a % rank for a in axes}


def _fixed_length_of(node: Node) -> int:
    length = node.inputs[0].shape[1]
    if length is None:
        raise Unsteppable(
            f"{_describe(node.operation)} depends on absolute positions of a variable-length "
            "sequence"
        )
    return int(length)


def _describe(op: Any) -> str:
    return f"{type(op).__name__} '{getattr(op, 'name', '?')}'"
