"""What the SDK returns: plain dataclasses and numpy, no protobuf (calls.py converts)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Outputs = np.ndarray | list[np.ndarray]
# What predict returns: the outputs, or for a model with several outputs a dict of them by name.
Predicted = Outputs | dict[str, Outputs]
# What a session step gives: an array, or for a model with several outputs a dict of them by name.
SessionValues = np.ndarray | dict[str, np.ndarray]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]  # -1: any size
    sequence: bool = False  # [batch, time, ...] rather than [batch, ...]
    vocabulary: int = 0  # token ids: each in [0, vocabulary); 0 for other inputs
    labels: tuple[str, ...] = ()  # a classification output's labels (feature index -> label)


Ranking = list[list[tuple[str, float]]]  # per output vector (or step), the k best (label, score)
# A single output's rankings, or (several outputs) each labelled output's by name
Rankings = Ranking | dict[str, Ranking]


@dataclass(frozen=True)
class Prediction:
    model: str
    version: int
    mode: str
    # [batch, ...] when every output has the same shape, else a list; by name (a dict) for a
    # model with several outputs
    outputs: Predicted
    top_k: Rankings = field(default_factory=list)


@dataclass(frozen=True)
class StreamPart:
    """A vector output whole, or one step of a sequence output, as soon as it is computed."""

    input_index: int
    step: int
    last: bool
    values: np.ndarray
    top_k: list[tuple[str, float]] = field(default_factory=list)
    output_name: str = ""  # models with several outputs: which output `values` is


@dataclass(frozen=True)
class SessionInfo:
    """The open session: on a resumed one, the replica's (each resumption opens anew)."""

    session_id: str
    model: str
    version: int
    mode: str
    session_support: str
    resumable: bool = False  # the server seals checkpoints (it has a session key)
    resumed_at_step: int = 0  # opened from a token: the steps since open or reset it holds
    # ... and its `messages`: send again the steps and reset messages from this index on
    resumed_at_message: int = 0


@dataclass(frozen=True)
class SessionOutput:
    """One session reply. `values`: [steps, out] (aligned, unaligned) or the running vector
    [out] (many-to-one); for a model with several outputs, a dict of each output laid out so, by
    output name (sorted); None where the model gives no output yet (fixed-length models)."""

    step: int  # index of the first step in `values` since open or reset
    values: SessionValues | None
    top_k: Rankings = field(default_factory=list)
    last: bool = False


@dataclass(frozen=True)
class ModelStatus:
    name: str
    version: int
    state: str
    mode: str
    error: str
    compute_path: str = ""  # the compiled path proven equal to Keras at load


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    version: int
    versions: tuple[int, ...]
    mode: str
    input: TensorSpec
    output: TensorSpec
    labels: tuple[str, ...]
    description: str
    max_sequence_length: int
    max_batch_size: int
    streams_steps: bool
    session_support: str
    open_sessions: int
    max_sessions: int
    state: str
    error: str
    compute_path: str = ""
    proof: str = ""
    session_reason: str = ""
    max_request_elements: int = 0
    max_inputs_per_request: int = 0
    max_message_bytes: int = 0
    max_stream_messages: int = 0
    inputs: tuple[TensorSpec, ...] = ()  # every input and output by name
    outputs: tuple[TensorSpec, ...] = ()
    max_string_bytes: int = 0  # UTF-8 bytes of one text element (0: an older server)
    max_request_string_bytes: int = 0  # UTF-8 bytes of all the text in one request
