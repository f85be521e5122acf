"""The state layout: what a session carries between steps, as named arrays with the batch first.

Every key is built here. `STEPS` ("t", [B] int32: steps fed so far) is in every state; a model
with static inputs (no time axis) keeps each under `static_key(name)`; a recompute program adds
each sequence input fed so far under `prefix_key(name)`; an incremental program adds, per stepped
op, keys under the op's own prefix "<node index>.<layer name>" (see `OpKeys`). States of one
program with equal shapes stack along the batch axis and split back exactly (pure data movement).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

State = dict[str, np.ndarray]

STEPS = "t"


def static_key(name: str) -> str:
    """Where a static input (given once per session) is kept."""
    return f"in/{name}"


def prefix_key(name: str) -> str:
    """Where a recompute program keeps a sequence input's steps fed so far."""
    return f"x/{name}"


@dataclass(frozen=True)
class OpKeys:
    """The state keys of one stepped op of an incremental program."""

    prefix: str

    @classmethod
    def of(cls, index: int, name: str) -> OpKeys:
        """Keys of the graph's `index`-th node, a layer named `name`: unique and readable."""
        return cls(f"{index:02d}.{name}")

    def cell_state(self, i: int) -> str:
        """A recurrent layer's i-th cell state (h, c, ...)."""
        return f"{self.prefix}/s{i}"

    @property
    def last_output(self) -> str:
        """A recurrent layer's output at the last step fed (what masked steps repeat)."""
        return f"{self.prefix}/out"

    @property
    def window(self) -> str:
        """A causal convolution's last inputs (its receptive field before the new steps)."""
        return f"{self.prefix}/win"

    @property
    def tail(self) -> str:
        """A fixed-length transition's buffer of the last steps."""
        return f"{self.prefix}/buf"


def steps_fed(batch: int) -> State:
    """The `STEPS` entry of a fresh state."""
    return {STEPS: np.zeros((batch,), np.int32)}


def batch_of(state: State) -> int:
    return int(np.asarray(state[STEPS]).shape[0])


def tile(arrays: State, batch: int) -> State:
    """Batch-1 arrays repeated for `batch` sessions."""
    return {k: np.repeat(v, batch, axis=0) for k, v in arrays.items()}


def stack_states(states: Sequence[State]) -> State:
    """Sessions' states of one program, of equal shapes (the step queue groups them so), as one
    batch."""
    return {key: np.concatenate([s[key] for s in states], axis=0) for key in states[0]}


def split_states(state: State) -> list[State]:
    """A batched state back into batch-1 states (inverse of `stack_states`)."""
    return [{k: v[i : i + 1].copy() for k, v in state.items()} for i in range(batch_of(state))]


def state_specs(example: State) -> dict[str, tf.TensorSpec]:
    """Signature of a state in a traced step function: any batch, the example's other axes."""
    return {
        k: tf.TensorSpec([None, *v.shape[1:]], tf.as_dtype(v.dtype)) for k, v in example.items()
    }


def to_numpy(tensors: dict[str, tf.Tensor]) -> State:
    return {k: v.numpy() for k, v in tensors.items()}
