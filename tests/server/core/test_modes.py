"""Modes come from the shapes of a model's input and output, or from its config, checked."""

from __future__ import annotations

import pytest

from seqserve_server.core.errors import ModelLoadError
from seqserve_server.core.modes import Mode, infer_mode, resolve_mode


@pytest.mark.parametrize(
    ("inp", "out", "mode"),
    [
        ((4,), (3,), Mode.ONE_TO_ONE),
        ((4,), (8, 8), Mode.ONE_TO_MANY),
        ((None, 8), (10,), Mode.MANY_TO_ONE),
        ((None, 1), (None, 1), Mode.MANY_TO_MANY_ALIGNED),
        ((24, 2), (24, 2), Mode.MANY_TO_MANY_ALIGNED),
        ((52, 1), (13, 1), Mode.MANY_TO_MANY_UNALIGNED),
        ((None, 1), (13, 1), Mode.MANY_TO_MANY_UNALIGNED),
    ],
)
def test_infer_mode(inp: tuple, out: tuple, mode: Mode) -> None:
    assert infer_mode(inp, out) is mode


def test_stated_mode_must_fit_the_shapes() -> None:
    assert (
        resolve_mode(Mode.MANY_TO_MANY_UNALIGNED, (10, 1), (10, 1)) is Mode.MANY_TO_MANY_UNALIGNED
    )
    with pytest.raises(ModelLoadError, match="states mode many_to_one"):
        resolve_mode(Mode.MANY_TO_ONE, (None, 3), (None, 2))
    with pytest.raises(ModelLoadError, match="unsupported shapes"):
        infer_mode((8, 8, 1), (10,))
