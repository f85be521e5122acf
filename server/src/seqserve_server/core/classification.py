"""Top-k labels for classifier outputs, when a model's config names its labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidInput


@dataclass(frozen=True)
class TopK:
    labels: list[str]
    scores: list[float]
    indices: list[int]


def top_k(rows: np.ndarray, labels: list[str], k: int) -> list[TopK]:
    """The k best labels of every row of `rows` ([n, classes]), best first."""
    k = min(k, rows.shape[-1])
    order = np.argsort(-rows, axis=-1, kind="stable")[:, :k]
    scores = np.take_along_axis(rows, order, axis=-1)
    return [
        TopK([labels[i] for i in idx], [float(s) for s in sc], [int(i) for i in idx])
        for idx, sc in zip(order.tolist(), scores, strict=True)
    ]


def check_top_k(k: int, labels: list[str], field: str) -> None:
    """A request for k labels needs 0 <= k <= the labels its model's config names."""
    if k < 0:
        raise InvalidInput(field, "0 or more", str(k))
    if k and not labels:
        raise InvalidInput(field, "0 (this model's config names no labels)", str(k))
    if k > len(labels):
        raise InvalidInput(field, f"at most {len(labels)} (the model's labels)", str(k))
