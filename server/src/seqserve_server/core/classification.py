"""Top-k labels for classifier outputs, when a model's config names their labels.

A model's labels are kept by output name (`Labels`: a single output's under `output`), so one
classification head or several are the same case; rankings come back by output name (`Ranked`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InvalidInput
from .signature import OutputSpec


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


Labels = dict[str, list[str]]  # output name -> its labels (classification outputs only)


def output_labels(
    configured: list[str] | dict[str, list[str]], outputs: Sequence[OutputSpec]
) -> Labels:
    """A config's `labels` by output name, checked against the outputs (ValueError saying why):
    a list names a single output's features; a mapping names each labelled output's."""
    if not configured:
        return {}
    if isinstance(configured, list):
        if len(outputs) > 1:
            names = ", ".join(o.name for o in outputs)
            raise ValueError(
                f"this model has several outputs ({names}): name each labelled output's labels "
                "(labels: {output name: [labels]})"
            )
        configured = {outputs[0].name: configured}
    widths = {o.name: o.width for o in outputs}
    for name, labels in configured.items():
        if name not in widths:
            raise ValueError(f"labels name output {name!r}; the outputs are {', '.join(widths)}")
        if len(labels) != widths[name]:
            raise ValueError(
                f"config names {len(labels)} labels for output {name!r} of {widths[name]} features"
            )
    return dict(configured)


def check_top_k(k: int, labels: Labels, field: str) -> None:
    """A request for k labels needs 0 <= k <= the most labels an output has (each output's
    ranking is capped at its own)."""
    if k < 0:
        raise InvalidInput(field, "0 or more", str(k))
    if k and not labels:
        raise InvalidInput(field, "0 (this model's config names no labels)", str(k))
    most = max((len(v) for v in labels.values()), default=0)
    if k > most:
        raise InvalidInput(field, f"at most {most} (the model's labels)", str(k))


Ranked = dict[str, list[TopK]]  # output name -> the k best labels of each of its rows


def rank(named: Mapping[str, np.ndarray], labels: Labels, k: int) -> Ranked:
    """Every labelled output's rows ([..., classes], flattened to rows) ranked, by output name."""
    return {
        name: top_k(named[name].reshape(-1, named[name].shape[-1]), names, k)
        for name, names in labels.items()
    }
