"""Access to a Keras 3 functional graph: its nodes in order, and running them one by one.

Both the step programs (stepping/) and the runtime's graph path use it; the Keras internals it
needs are read in stepping/keras_internals.py. Running the nodes ourselves lets a layer whose
own graph-mode code is wrong be replaced by an exact equivalent:
Keras 3.15's `TimeDistributed` maps over `ops.shape(inputs)[0]` taken *before* it swaps the batch
and time axes, so with an unknown time length it computes `batch` steps instead of `time` steps
(a [2, 9, 5] input gives [2, 2, 4]). Eager calls and static lengths take a Python loop instead
and are right. Folding the time axis into the batch computes the same per-row math.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf
from keras import tree

from .stepping.keras_internals import Node, call_takes_mask, functional_graph, propagates_training


class GraphError(ValueError):
    """The model has no functional graph that can be walked node by node."""


@dataclass
class Graph:
    """Topologically ordered nodes of a functional graph, its inputs and outputs in the model's
    order."""

    nodes: list[Node]
    inputs: list[Any]  # KerasTensors
    outputs: list[Any]

    @property
    def input(self) -> Any:
        """The only input (a graph of several has none)."""
        return self.inputs[0] if len(self.inputs) == 1 else None

    @property
    def output(self) -> Any:
        """The only output (a graph of several has none)."""
        return self.outputs[0] if len(self.outputs) == 1 else None


def graph_of(
    model: keras.Model, several_inputs: bool = False, several_outputs: bool = False
) -> Graph:
    """The graph; one input and one output unless `several_inputs`/`several_outputs`."""
    fn = functional_graph(model)
    if fn is None:
        raise GraphError(f"{type(model).__name__} has no functional graph (subclassed model?)")
    if (len(fn.inputs) != 1 and not several_inputs) or (
        len(fn.outputs) != 1 and not several_outputs
    ):
        raise GraphError("the graph has several inputs or outputs")
    return Graph(nodes=fn.nodes, inputs=list(fn.inputs), outputs=list(fn.outputs))


def call_op(op: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """Call an op like ``Functional.call(training=False)`` does (inference semantics)."""
    kwargs = dict(kwargs)
    if propagates_training(op):
        kwargs["training"] = False
    return op(*args, **kwargs)


def run_node(node: Node, values: dict[int, Any]) -> None:
    """Compute a node's outputs from `values` (KerasTensor id -> tensor) and store them there."""
    if isinstance(node.operation, keras.layers.TimeDistributed):
        values[id(node.outputs[0])] = time_distributed(node, values)
        return
    args, kwargs = node.fill_in(values)
    outs = tree.flatten(call_op(node.operation, args, kwargs))
    for kt, value in zip(node.outputs, outs, strict=True):
        values[id(kt)] = value


def time_distributed(node: Node, values: dict[int, Any]) -> tf.Tensor:
    """TimeDistributed: the wrapped layer on all steps folded into the batch axis."""
    args, kwargs = node.fill_in(values)
    x, mask = args[0], kwargs.get("mask")
    inner = node.operation.layer
    lead = tf.shape(x)[:2]
    flat = tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], axis=0))
    inner_kwargs = {}
    if mask is not None and call_takes_mask(inner):
        inner_kwargs["mask"] = tf.reshape(mask, [-1, *mask.shape[2:]])
    y = call_op(inner, [flat], inner_kwargs)
    y = tf.reshape(y, tf.concat([lead, tf.shape(y)[1:]], axis=0))
    out_shape = node.outputs[0].shape
    return tf.ensure_shape(y, [None, None, *out_shape[2:]])


def run_graph(graph: Graph, *xs: tf.Tensor) -> tf.Tensor:
    """The whole model on its inputs `xs` (in the model's order), node by node (TimeDistributed
    folded)."""
    values: dict[int, Any] = {id(kt): x for kt, x in zip(graph.inputs, xs, strict=True)}
    for node in graph.nodes:
        run_node(node, values)
    return values[id(graph.output)]
