"""The five ways a recurrent network runs, and how to tell them from a model's graph."""

from __future__ import annotations

import enum
from collections.abc import Sequence

from .errors import ModelLoadError

Shape = Sequence[int | None]


class Mode(str, enum.Enum):
    ONE_TO_ONE = "one_to_one"
    ONE_TO_MANY = "one_to_many"
    MANY_TO_ONE = "many_to_one"
    MANY_TO_MANY_ALIGNED = "many_to_many_aligned"
    MANY_TO_MANY_UNALIGNED = "many_to_many_unaligned"

    @property
    def takes_sequence(self) -> bool:
        return self in _SEQUENCE_IN

    @property
    def gives_sequence(self) -> bool:
        return self in _SEQUENCE_OUT


_SEQUENCE_IN = {Mode.MANY_TO_ONE, Mode.MANY_TO_MANY_ALIGNED, Mode.MANY_TO_MANY_UNALIGNED}
_SEQUENCE_OUT = {Mode.ONE_TO_MANY, Mode.MANY_TO_MANY_ALIGNED, Mode.MANY_TO_MANY_UNALIGNED}


def infer_mode(input_shape: Shape, output_shape: Shape, sequence_input: bool | None = None) -> Mode:
    """Infer the mode from shapes without the batch axis and what the graph says of the input.

    `sequence_input`: True for a sequence ((steps, features), or (steps,) token ids feeding an
    Embedding), False for a vector, None when the graph cannot tell (then rank decides: (F,) is a
    vector). An output of rank 2 is a sequence, of rank 1 a vector.
    """
    in_rank, out_rank = len(input_shape), len(output_shape)
    if sequence_input is None:
        sequence_input = in_rank == 2
    if in_rank not in (1, 2) or out_rank not in (1, 2):
        raise ModelLoadError(
            f"unsupported shapes: input {_fmt(input_shape)}, output {_fmt(output_shape)}; "
            "expected (features,) for vectors, (steps, features) for sequences or (steps,) for "
            "token ids"
        )
    if not sequence_input:
        return Mode.ONE_TO_ONE if out_rank == 1 else Mode.ONE_TO_MANY
    if out_rank == 1:
        return Mode.MANY_TO_ONE
    steps_in, steps_out = input_shape[0], output_shape[0]
    if steps_in == steps_out:
        return Mode.MANY_TO_MANY_ALIGNED
    return Mode.MANY_TO_MANY_UNALIGNED


def resolve_mode(
    stated: Mode | None, input_shape: Shape, output_shape: Shape, sequence_input: bool | None = None
) -> Mode:
    """The stated mode if the graph allows it, else the inferred one; a contradiction fails.

    An input the graph cannot classify (integers of rank 1 that feed no Embedding) takes the
    stated mode's reading: a sequence of ids for the many-to-* modes, a vector otherwise.
    """
    if sequence_input is None and stated is not None and len(input_shape) == 1:
        sequence_input = stated.takes_sequence
    inferred = infer_mode(input_shape, output_shape, sequence_input)
    described = f"input {_fmt(input_shape)}, output {_fmt(output_shape)}"
    return reconcile_mode(stated, inferred, described)


def reconcile_mode(stated: Mode | None, inferred: Mode, described: str) -> Mode:
    """The stated mode where the graph allows it; `described`: the shapes, for the refusal."""
    if stated is None or stated == inferred:
        return inferred
    # Equal fixed lengths fit an encoder-decoder whose output happens to be as long as its input.
    if stated == Mode.MANY_TO_MANY_UNALIGNED and inferred == Mode.MANY_TO_MANY_ALIGNED:
        return stated
    raise ModelLoadError(
        f"config states mode {stated.value} but the model's shapes ({described}) make it "
        f"{inferred.value}"
    )


def several_inputs_mode(any_sequence: bool, output_rank: int, aligned: bool) -> Mode:
    """The mode of a model with several inputs: it takes a sequence when any input is one; a
    sequence output (rank 2) is aligned when it is as long as every sequence input of the item
    (then they share one length), else unaligned (e.g. as long as a decoder input only)."""
    if output_rank not in (1, 2):
        raise ModelLoadError(f"unsupported output rank {output_rank}: expected 1 or 2")
    if not any_sequence:
        return Mode.ONE_TO_ONE if output_rank == 1 else Mode.ONE_TO_MANY
    if output_rank == 1:
        return Mode.MANY_TO_ONE
    return Mode.MANY_TO_MANY_ALIGNED if aligned else Mode.MANY_TO_MANY_UNALIGNED


def _fmt(shape: Shape) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"
