"""A model as it is served: named inputs and named outputs, their shapes, dtypes and kinds.

Plain data (numpy only), read by every layer of the core: validation (inputs.py), the proof's
probes (proof.py), the compiled paths (runtime.py), the step programs (stepping/) and, through
the adapters, both protocols' metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SINGLE_INPUT_NAME = "input"  # what metadata and `named_inputs` call a single-input model's input
STRING = np.dtype(object)  # text: numpy object arrays of UTF-8 `bytes` (tf.string in the model)
TEXT_SHAPE = (1,)  # a whole text per item, as the core holds it: [batch, 1]


@dataclass(frozen=True)
class InputKind:
    """What the probes must look like: shape without batch (None: any length), dtype, and for
    token ids the vocabulary size."""

    shape: tuple[int | None, ...]
    dtype: np.dtype
    takes_sequence: bool
    vocabulary: int | None = None
    words: tuple[str, ...] = ()  # text: the model's own vocabulary, to write probe texts from


@dataclass(frozen=True)
class InputSpec:
    """One input: shape without the batch axis (None: dynamic), dtype, whether it is a sequence
    ([batch, time, ...]; token ids when it has no feature axis; else static, given once per
    item) and, for integer ids, the vocabulary (ids in [0, vocabulary); None when unchecked).

    Strings (`STRING`): token strings per step ((steps,), a sequence like token ids), or a
    whole text per item (`text`: the model's input is () or (1,), it makes the time axis
    itself); `words` is the vocabulary of the lookup layer they feed, for the proof's probes."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype
    sequence: bool
    vocabulary: int | None = None
    words: tuple[str, ...] = ()

    @property
    def tokens(self) -> bool:
        return self.sequence and len(self.shape) == 1

    @property
    def string(self) -> bool:
        return self.dtype == STRING

    @property
    def text(self) -> bool:
        """A whole text per item: one string, tokenized inside the model (no steps on the
        wire); the core holds it as [batch, 1] (`TEXT_SHAPE`) whatever the model's shape."""
        return self.string and not self.sequence

    @property
    def features(self) -> int | None:
        return None if self.tokens or self.text else self.shape[-1]

    @property
    def fixed_steps(self) -> int | None:
        return self.shape[0] if self.sequence else None

    @property
    def kind(self) -> InputKind:
        shape = TEXT_SHAPE if self.text else self.shape
        return InputKind(shape, self.dtype, self.sequence, self.vocabulary, self.words)


@dataclass(frozen=True)
class OutputSpec:
    """One output: shape without the batch axis (None: dynamic) and dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    @property
    def width(self) -> int:
        return int(self.shape[-1] or 0)


SINGLE_OUTPUT_NAME = "output"  # what metadata and named outputs call a single output


@dataclass(frozen=True)
class Signature:
    """A model as named inputs and named outputs, in the model's order; one of each is the case
    of one (named `input` and `output`). Several outputs are all vectors or all sequences of
    one dtype (runtime.py checks it): they are computed packed along the feature axis
    (`packed_shape`), so batching, the proof and streams see one array, and `split` by name.
    `equal_lengths`: the sequence inputs of one item must share one length (the model fails
    otherwise); `output_follows`: which input's length a sequence output has (None: fixed, or
    no sequence output)."""

    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    equal_lengths: bool = False
    output_follows: str | None = None

    @property
    def several_outputs(self) -> bool:
        return len(self.outputs) > 1

    @property
    def several_inputs(self) -> bool:
        return len(self.inputs) > 1

    @property
    def sequence_inputs(self) -> tuple[InputSpec, ...]:
        return tuple(s for s in self.inputs if s.sequence)

    @property
    def static_inputs(self) -> tuple[InputSpec, ...]:
        """Inputs without a time axis: a session takes them once, at open."""
        return tuple(s for s in self.inputs if not s.sequence)

    @property
    def text_inputs(self) -> tuple[InputSpec, ...]:
        """Whole-text inputs: each item is computed alone (see runtime.py)."""
        return tuple(s for s in self.inputs if s.text)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    @property
    def packed_shape(self) -> tuple[int | None, ...]:
        """The shape the model computes: the one output's, or several packed by feature axis."""
        first = self.outputs[0].shape
        if not self.several_outputs:
            return first
        return (*first[:-1], sum(o.width for o in self.outputs))

    @property
    def output_dtype(self) -> np.dtype:
        return self.outputs[0].dtype

    def split(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """Packed outputs (feature axis last) by output name."""
        if not self.several_outputs:
            return {self.outputs[0].name: values}
        ends = np.cumsum([o.width for o in self.outputs])[:-1]
        return dict(zip(self.output_names, np.split(values, ends, axis=-1), strict=True))

    @property
    def fixed_steps(self) -> int | None:
        """The one input length the sequence inputs require (a fixed-length model), else None."""
        lengths = {s.fixed_steps for s in self.sequence_inputs}
        return lengths.pop() if len(lengths) == 1 else None
