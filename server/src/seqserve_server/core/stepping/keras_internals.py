"""Every read of Keras' private or internal attributes, in one file: the one to change on a Keras
upgrade (written against Keras 3.15).

A functional model's graph (`Functional._nodes_by_depth`, a Sequential's `_functional`), the
nodes in it (`keras.src.ops.node.Node` and its `SymbolicArguments`), what a layer's `call`
accepts (`_call_has_training_arg`, `_call_has_mask_arg`, `_call_context_args`) and the
operations `keras.ops` records as nodes (`keras.src.ops.*` classes and their `axis`) are not
public API. The rest of the server reads graphs through `Node` and the functions here only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import keras
from keras import tree


@dataclass(frozen=True, eq=False)
class Node:
    """One call of an operation in a functional graph, read out of Keras' internal node.

    `inputs`: the graph tensors (KerasTensors) among the call's arguments, in argument order;
    `mask`: the call's `mask=` argument (a graph tensor or None).
    """

    operation: Any
    inputs: tuple[Any, ...]
    outputs: tuple[Any, ...]
    mask: Any
    _arguments: Any  # keras.src.ops.symbolic_arguments.SymbolicArguments

    @classmethod
    def of(cls, node: Any) -> Node:
        arguments = node.arguments
        return cls(
            node.operation,
            tuple(arguments.keras_tensors),
            tuple(node.outputs),
            arguments.kwargs.get("mask"),
            arguments,
        )

    def fill_in(self, values: dict[int, Any]) -> tuple[Sequence[Any], dict[str, Any]]:
        """The call's arguments with each graph tensor replaced by `values[id(tensor)]`."""
        args, kwargs = self._arguments.fill_in(values)
        return args, kwargs

    def constants(self) -> list[Any]:
        """The call's arguments that are not graph tensors (scalars, None, ...), flattened."""
        flat = tree.flatten((self._arguments.args, self._arguments.kwargs))
        return [a for a in flat if not isinstance(a, keras.KerasTensor)]


@dataclass(frozen=True)
class FunctionalGraph:
    """A functional model's nodes in topological order (inputs first), inputs and outputs."""

    nodes: list[Node]
    inputs: list[Any]  # KerasTensors
    outputs: list[Any]


def functional_graph(model: keras.Model) -> FunctionalGraph | None:
    """The model's functional graph; None for a model that has none (subclassed, unbuilt)."""
    fn = model._functional if isinstance(model, keras.Sequential) else model
    if fn is None or not hasattr(fn, "_nodes_by_depth"):
        return None
    nodes = [
        Node.of(node)
        for depth in sorted(fn._nodes_by_depth, reverse=True)
        for node in fn._nodes_by_depth[depth]
        if node.operation is not None and not node.is_input
    ]
    return FunctionalGraph(nodes, list(fn.inputs), list(fn.outputs))


def call_takes_training(layer: Any) -> bool:
    """Whether `layer.call` has a `training` argument (an RNN cell's may not)."""
    return bool(layer._call_has_training_arg)


def call_takes_mask(layer: Any) -> bool:
    """Whether `layer.call` has a `mask` argument."""
    return bool(layer._call_has_mask_arg)


def propagates_training(op: Any) -> bool:
    """Whether `Functional.call(training=...)` passes `training` on to this operation."""
    return "training" in getattr(op, "_call_context_args", ())


class OpsCall(NamedTuple):
    """A `keras.ops` function recorded as a graph node: its operation class name ("Add",
    "Any", ...) and, for reductions, the axis it reduces (None: all axes) and whether it keeps
    the reduced axes."""

    name: str
    axis: Any
    keepdims: bool = False


def ops_call(op: Any) -> OpsCall | None:
    """The `keras.ops` call `op` records (e.g. `ops.any` under a Masking layer); None for
    layers and any other operation."""
    if isinstance(op, keras.layers.Layer) or not type(op).__module__.startswith("keras.src.ops"):
        return None
    return OpsCall(type(op).__name__, getattr(op, "axis", None), bool(getattr(op, "keepdims", 0)))


def producer(tensor: Any) -> Any:
    """The operation (layer) whose output a graph tensor is (`KerasTensor._keras_history`), or
    None for an input or a tensor without history."""
    history = getattr(tensor, "_keras_history", None)
    return getattr(history, "operation", None)
