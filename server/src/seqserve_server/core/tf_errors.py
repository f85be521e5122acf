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
        return InvalidInput("inputs.values", "values the model can compute", reason(exc))
    return exc


_NOISE = ("Graph execution error", "Detected at node", "File ", "[[", "Exception encountered")


def reason(exc: tf.errors.OpError) -> str:
    """The line of a TensorFlow error that says what went wrong (a graph function's error
    starts with where it was traced), without paths, at most 300 characters."""
    lines = [line.strip() for line in str(exc.message).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(_NOISE)]
    return without_paths((said or lines or ["TensorFlow error"])[0][:300])
