"""A batch of inputs or outputs as numpy: dense, or ragged sequences without padding."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Batch:
    """`values` is dense ([batch, ...]) when `lengths` is None, else the steps of every sequence
    one after another ([total_steps, features]) with `lengths[i]` steps for sequence i."""

    values: np.ndarray
    lengths: np.ndarray | None = None

    @classmethod
    def from_items(cls, items: list[np.ndarray]) -> Batch:
        """Stack equal-shaped items densely; concatenate sequences of different lengths."""
        if all(item.shape == items[0].shape for item in items):
            return cls(np.stack(items))
        return cls(np.concatenate(items), np.array([len(i) for i in items], dtype=np.int64))

    @property
    def size(self) -> int:
        return len(self.values) if self.lengths is None else len(self.lengths)

    @property
    def is_ragged(self) -> bool:
        return self.lengths is not None

    def items(self) -> list[np.ndarray]:
        """One array per member: a vector, or a sequence of its own length."""
        if self.lengths is None:
            return list(self.values)
        return np.split(self.values, np.cumsum(self.lengths)[:-1])

    def item_lengths(self) -> np.ndarray:
        """Steps of every member (for dense sequences, the shared step count)."""
        if self.lengths is not None:
            return self.lengths
        return np.full(len(self.values), self.values.shape[1], dtype=np.int64)
