"""Per-request size limits: server-wide defaults (flags) that a model's config may override.

They bound what one request can make the server hold or compute, whatever the model: a model
whose config states no sequence limit still gets a finite one.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model_config import ModelConfig


@dataclass(frozen=True)
class RequestLimits:
    max_sequence_length: int = 4096  # steps per input sequence
    max_request_elements: int = 16 * 1024 * 1024  # numbers in one request's tensor
    max_inputs_per_request: int = 4096  # sequences (or vectors) in one request

    def for_model(self, config: ModelConfig) -> RequestLimits:
        """This model's limits: its config's where it states one (non-zero), else these."""
        return RequestLimits(
            max_sequence_length=config.max_sequence_length or self.max_sequence_length,
            max_request_elements=config.max_request_elements or self.max_request_elements,
            max_inputs_per_request=config.max_inputs_per_request or self.max_inputs_per_request,
        )
