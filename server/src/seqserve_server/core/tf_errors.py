"""TensorFlow's errors raised while computing a request, as the core errors they really are.

A model can reject input values the signature allows (an `Embedding` index out of range raises
`InvalidArgumentError`), and a large request can exhaust memory (`ResourceExhaustedError`): both
are about the request, not a server fault.
"""

from __future__ import annotations

import tensorflow as tf

from .errors import InvalidInput, LimitExceeded, without_paths


def from_tensorflow(exc: Exception) -> Exception:
    """The core error for a TensorFlow error caused by the request; anything else unchanged."""
    if isinstance(exc, tf.errors.ResourceExhaustedError):
        return LimitExceeded(
            "the server ran out of memory computing this request: send fewer or shorter inputs"
        )
    if isinstance(exc, tf.errors.InvalidArgumentError):
        first_line = without_paths(str(exc.message).strip().splitlines()[0][:300])
        return InvalidInput("inputs.values", "values the model can compute", first_line)
    return exc
