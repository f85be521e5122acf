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


Item = np.ndarray | tuple[np.ndarray, ...]  # one input's array, or one per input of several


@dataclass(frozen=True)
class NamedBatch:
    """The inputs of a model with several inputs: one `Batch` per input name, in the model's
    order, all of one size; item i of every batch together form the model's input i."""

    batches: dict[str, Batch]

    @classmethod
    def from_items(cls, names: tuple[str, ...], items: list[tuple[np.ndarray, ...]]) -> NamedBatch:
        columns = zip(*items, strict=True) if items else ([] for _ in names)
        return cls({n: Batch.from_items(list(c)) for n, c in zip(names, columns, strict=True)})

    @property
    def size(self) -> int:
        return next(iter(self.batches.values())).size

    def items(self) -> list[tuple[np.ndarray, ...]]:
        """One tuple per member: its array of every input, in the model's order."""
        return list(zip(*(b.items() for b in self.batches.values()), strict=True))
