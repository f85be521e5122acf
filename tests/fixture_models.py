"""Small seeded Keras models covering every mode and the architectures seqserve must serve.

The server must not care where a model came from: these are written into a throwaway model
repository exactly as an operator would lay one out.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np
import yaml
from keras import layers

FEATURES = 3
Builder = Callable[[], keras.Model]


def _seq(steps: int | None = None, features: int = FEATURES) -> keras.KerasTensor:
    return keras.Input((steps, features))


def one_to_one() -> keras.Model:
    inp = keras.Input((4,))
    hidden = layers.Dense(8, activation="relu")(inp)
    return keras.Model(inp, layers.Dense(3, activation="softmax")(hidden))


def one_to_many() -> keras.Model:
    inp = keras.Input((4,))
    x = layers.Dense(8, activation="relu")(inp)
    x = layers.RepeatVector(5)(x)
    x = layers.LSTM(6, return_sequences=True)(x)
    return keras.Model(inp, layers.TimeDistributed(layers.Dense(2))(x))


def many_to_one() -> keras.Model:
    inp = _seq()
    x = layers.LSTM(8)(inp)
    return keras.Model(inp, layers.Dense(4, activation="softmax")(x))


def aligned() -> keras.Model:
    inp = _seq()
    x = layers.LSTM(8, return_sequences=True)(inp)
    return keras.Model(inp, layers.Dense(2)(x))


def encoder_decoder() -> keras.Model:
    inp = _seq()
    x = layers.LSTM(8)(inp)
    x = layers.RepeatVector(4)(x)
    x = layers.LSTM(8, return_sequences=True)(x)
    return keras.Model(inp, layers.Dense(1)(x))


def cropped() -> keras.Model:
    inp = _seq(10)
    x = layers.LSTM(8, return_sequences=True)(inp)
    x = layers.Cropping1D((6, 0))(x)
    return keras.Model(inp, layers.Dense(1)(x))


def gru_aligned() -> keras.Model:
    inp = _seq()
    return keras.Model(inp, layers.GRU(5, return_sequences=True)(inp))


def simple_rnn_many_to_one() -> keras.Model:
    inp = _seq()
    return keras.Model(inp, layers.Dense(2)(layers.SimpleRNN(6)(inp)))


def stacked_lstm() -> keras.Model:
    inp = _seq()
    x = layers.LSTM(6, return_sequences=True)(inp)
    x = layers.LSTM(4, return_sequences=True)(x)
    return keras.Model(inp, layers.Dense(2)(x))


def stacked_bidirectional() -> keras.Model:
    inp = _seq()
    x = layers.Bidirectional(layers.LSTM(4, return_sequences=True))(inp)
    x = layers.LSTM(4, return_sequences=True)(x)
    return keras.Model(inp, layers.Dense(2)(x))


def conv_front_end() -> keras.Model:
    inp = _seq()
    x = layers.Conv1D(4, 3, padding="causal", activation="relu")(inp)
    x = layers.GRU(4)(x)
    return keras.Model(inp, layers.Dense(2)(x))


def masked() -> keras.Model:
    inp = _seq()
    x = layers.Masking(0.0)(inp)
    x = layers.LSTM(4, return_sequences=True)(x)
    return keras.Model(inp, layers.Dense(2)(x))


def fixed_length() -> keras.Model:
    inp = _seq(6)
    return keras.Model(inp, layers.Dense(1)(layers.LSTM(4)(inp)))


def unsafe_lambda() -> keras.Model:
    inp = keras.Input((4,))
    return keras.Model(inp, layers.Lambda(lambda t: t * 2.0)(inp))


# name -> (builder, config)
REPOSITORY: dict[str, tuple[Builder, dict]] = {
    "iris_like": (one_to_one, {"labels": ["a", "b", "c"], "description": "one-to-one test"}),
    "generator": (one_to_many, {}),
    "classifier": (many_to_one, {"labels": ["w", "x", "y", "z"], "max_sequence_length": 50}),
    "aligned": (aligned, {"mode": "many_to_many_aligned"}),
    "enc_dec": (encoder_decoder, {}),
    "cropped": (cropped, {"mode": "many_to_many_unaligned"}),
    "gru": (gru_aligned, {}),
    "simple_rnn": (simple_rnn_many_to_one, {}),
    "stacked": (stacked_lstm, {}),
    "stacked_bi": (stacked_bidirectional, {}),
    "conv": (conv_front_end, {}),
    "masked": (masked, {}),
    "fixed": (fixed_length, {}),
    "limited": (
        gru_aligned,
        {"max_sessions": 2, "session_idle_timeout_s": 1.0, "max_queue_size": 8},
    ),
    "unsafe": (unsafe_lambda, {}),
    "wrong_mode": (aligned, {"mode": "many_to_one"}),
}
GOOD_MODELS = [n for n in REPOSITORY if n not in ("unsafe", "wrong_mode")]


def write_repository(root: Path, only: set[str] | None = None) -> Path:
    """Save the fixture models (seeded) as `<root>/<name>/1/model.keras` with their configs."""
    for i, (name, (build, config)) in enumerate(REPOSITORY.items()):
        if only is not None and name not in only:
            continue
        keras.utils.set_random_seed(1000 + i)
        model_dir = root / name
        (model_dir / "1").mkdir(parents=True)
        build().save(model_dir / "1" / "model.keras")
        (model_dir / "config.yaml").write_text(yaml.safe_dump(config))
    if only is not None:
        return root
    (root / "corrupt" / "1").mkdir(parents=True)
    (root / "corrupt" / "1" / "model.keras").write_bytes(b"not a zip file")
    # A second version of one model: the newest is served unless a request names one.
    keras.utils.set_random_seed(7)
    (root / "aligned" / "2").mkdir()
    aligned().save(root / "aligned" / "2" / "model.keras")
    return root


def random_sequences(rng: np.random.Generator, lengths: list[int]) -> list[np.ndarray]:
    return [rng.normal(size=(n, FEATURES)).astype(np.float32) for n in lengths]
