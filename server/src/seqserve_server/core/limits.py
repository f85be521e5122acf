"""Per-request size limits: server-wide defaults (flags) that a model's config may override.

They bound what one request can make the server hold or compute, whatever the model: a model
whose config states no sequence limit still gets a finite one.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import LimitExceeded
from .model_config import ModelConfig
from .modes import Mode


@dataclass(frozen=True)
class RequestLimits:
    max_sequence_length: int = 4096  # steps per input sequence
    max_request_elements: int = 16 * 1024 * 1024  # numbers in one request's tensor
    max_inputs_per_request: int = 4096  # sequences (or vectors) in one request
    max_stream_messages: int = 1_000_000  # messages one PredictStream call may send
    max_string_bytes: int = 64 * 1024  # UTF-8 bytes of one text or token string
    max_request_string_bytes: int = 64 * 1024 * 1024  # UTF-8 bytes of text in one request

    def for_model(self, config: ModelConfig) -> RequestLimits:
        """This model's limits: its config's where it states one (non-zero), else these."""
        return RequestLimits(
            max_sequence_length=config.max_sequence_length or self.max_sequence_length,
            max_request_elements=config.max_request_elements or self.max_request_elements,
            max_inputs_per_request=config.max_inputs_per_request or self.max_inputs_per_request,
            max_stream_messages=config.max_stream_messages or self.max_stream_messages,
            max_string_bytes=config.max_string_bytes or self.max_string_bytes,
            max_request_string_bytes=(
                config.max_request_string_bytes or self.max_request_string_bytes
            ),
        )


def check_stream_messages(
    limit: int, mode: Mode, output_steps: int | None, lengths: list[int]
) -> None:
    """Refuse a PredictStream call before computing when it would send more than `limit`
    messages: one per output vector, or per step of an output sequence.

    `output_steps`: a sequence output's fixed length (None when dynamic: then it is taken as
    long as the input); `lengths`: every input's steps (1 for vectors).
    """
    if not mode.gives_sequence:
        messages = len(lengths)
    elif output_steps is not None and mode is not Mode.MANY_TO_MANY_ALIGNED:
        messages = output_steps * len(lengths)
    else:
        messages = sum(lengths)
    if messages > limit:
        raise LimitExceeded(
            f"inputs: PredictStream would send {messages} messages, at most {limit} per call "
            "(max_stream_messages); send fewer inputs or steps per call, or use Predict"
        )
