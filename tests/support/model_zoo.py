"""The project's zoo: small seeded Keras models of the architectures seqserve must serve exactly.

Each builder seeds Keras first, so weights are reproducible. ``ZOO`` maps a name to
``(builder, mode, fixed_length)``; ``fixed_length`` is the input length the model requires.
``STEPPER_CASES`` are the ones the in-process stepper tests step chunk by chunk; the whole zoo is
served by one server in test_zoo.py (Predict = PredictStream = session = eager Keras).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np
import yaml
from keras import layers

FEATURES = 3
ENC_LEN = 12  # fixed input length of the models whose graph depends on absolute positions
HORIZON = 4

Builder = Callable[[], keras.Model]


def seeded(builder: Builder) -> Builder:
    def build() -> keras.Model:
        keras.utils.set_random_seed(1234)
        return builder()

    build.__name__ = builder.__name__
    return build


@seeded
def lstm_aligned() -> keras.Model:
    return keras.Sequential(
        [keras.Input((None, FEATURES)), layers.LSTM(8, return_sequences=True), layers.Dense(2)]
    )


@seeded
def gru_aligned() -> keras.Model:
    return keras.Sequential(
        [keras.Input((None, FEATURES)), layers.GRU(8, return_sequences=True), layers.Dense(2)]
    )


@seeded
def simple_rnn_aligned() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((None, FEATURES)),
            layers.SimpleRNN(8, return_sequences=True),
            layers.TimeDistributed(layers.Dense(2)),
        ]
    )


@seeded
def stacked_lstm() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((None, FEATURES)),
            layers.LSTM(8, return_sequences=True),
            layers.Dropout(0.3),
            layers.LayerNormalization(),
            layers.LSTM(6, return_sequences=True),
            layers.Dense(2, activation="tanh"),
        ]
    )


@seeded
def diff_forecaster() -> keras.Model:
    """Predicts the next value as last value + LSTM(differences): causal convs + Add skip."""
    inp = keras.Input((None, 1))
    diff = layers.Conv1D(1, 2, padding="causal", use_bias=False, name="diff")(inp)
    wide = layers.Conv1D(4, 3, padding="causal", dilation_rate=2, activation="relu")(inp)
    x = layers.Concatenate()([layers.Rescaling(0.5)(diff), wide])
    x = layers.LSTM(8, return_sequences=True)(x)
    delta = layers.Dense(1)(x)
    model = keras.Model(inp, layers.Add()([inp, delta]))
    model.get_layer("diff").set_weights([np.array([[[-1.0]], [[1.0]]], np.float32)])
    return model


@seeded
def fixed_length_aligned() -> keras.Model:
    inp = keras.Input((ENC_LEN, FEATURES))
    x = layers.Conv1D(4, 3, padding="causal", activation="tanh")(inp)
    x = layers.BatchNormalization()(x)
    x = layers.SimpleRNN(6, return_sequences=True)(x)
    return keras.Model(inp, layers.TimeDistributed(layers.Dense(2))(x))


@seeded
def many_to_one() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((None, FEATURES)),
            layers.Rescaling(1 / 3.0),
            layers.LSTM(8),
            layers.Dense(4, activation="softmax"),
        ]
    )


@seeded
def masked_aligned() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((None, FEATURES)),
            layers.Masking(0.0),
            layers.Dense(5),
            layers.LSTM(8, return_sequences=True),
            layers.Dense(2),
        ]
    )


@seeded
def masked_many_to_one() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((None, FEATURES)),
            layers.Masking(0.0),
            layers.GRU(8, return_sequences=True),
            layers.LSTM(4),
            layers.Dense(2),
        ]
    )


@seeded
def encoder_decoder() -> keras.Model:
    """LSTM encoder -> RepeatVector -> LSTM decoder, plus a last-input-value skip."""
    inp = keras.Input((ENC_LEN, 1))
    x = layers.LSTM(8)(inp)
    x = layers.RepeatVector(HORIZON)(x)
    x = layers.LSTM(8, return_sequences=True)(x)
    x = layers.TimeDistributed(layers.Dense(1))(x)
    last = layers.Cropping1D((ENC_LEN - 1, 0))(inp)
    last = layers.RepeatVector(HORIZON)(layers.Reshape((1,))(last))
    return keras.Model(inp, layers.Add()([x, last]))


@seeded
def encoder_decoder_dynamic() -> keras.Model:
    inp = keras.Input((None, FEATURES))
    x = layers.GRU(8)(inp)
    x = layers.RepeatVector(HORIZON)(x)
    x = layers.LSTM(8, return_sequences=True)(x)
    return keras.Model(inp, layers.Dense(1)(x))


@seeded
def seq2seq_states() -> keras.Model:
    """Encoder hands its final [h, c] to the decoder (``return_state`` / ``initial_state``)."""
    inp = keras.Input((None, FEATURES))
    out, h, c = layers.LSTM(8, return_state=True)(inp)
    x = layers.RepeatVector(HORIZON)(out)
    x = layers.LSTM(8, return_sequences=True)(x, initial_state=[h, c])
    return keras.Model(inp, layers.Dense(2)(x))


@seeded
def cropped_tail() -> keras.Model:
    inp = keras.Input((ENC_LEN, FEATURES))
    x = layers.LSTM(8, return_sequences=True)(inp)
    x = layers.Cropping1D((ENC_LEN - HORIZON, 0))(x)
    return keras.Model(inp, layers.Dense(2)(x))


@seeded
def flatten_many_to_one() -> keras.Model:
    inp = keras.Input((ENC_LEN, FEATURES))
    x = layers.GRU(4, return_sequences=True)(inp)
    return keras.Model(inp, layers.Dense(2)(layers.Flatten()(x)))


@seeded
def bidirectional() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((None, FEATURES)),
            layers.Bidirectional(layers.LSTM(4, return_sequences=True)),
            layers.Dense(2),
        ]
    )


@seeded
def bidirectional_many_to_one() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((None, FEATURES)),
            layers.Bidirectional(layers.GRU(4)),
            layers.Dense(2, activation="softmax"),
        ]
    )


@seeded
def pooled_many_to_one() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((None, FEATURES)),
            layers.LSTM(8, return_sequences=True),
            layers.GlobalAveragePooling1D(),
            layers.Dense(2),
        ]
    )


@seeded
def dense_one_to_one() -> keras.Model:
    return keras.Sequential([keras.Input((4,)), layers.Dense(2)])


VOCAB = 30  # token models: ids 0..29, 0 the padding id where mask_zero is set


def _tokens() -> keras.KerasTensor:
    return keras.Input((None,), dtype="int32")


@seeded
def time_distributed_head() -> keras.Model:
    """The usual per-step head; Keras' own TimeDistributed is wrong on a dynamic time axis."""
    return keras.Sequential(
        [
            keras.Input((None, 5)),
            layers.LSTM(16, return_sequences=True),
            layers.TimeDistributed(layers.Dense(4)),
        ]
    )


@seeded
def masked_time_distributed() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((None, FEATURES)),
            layers.Masking(0.0),
            layers.GRU(6, return_sequences=True),
            layers.TimeDistributed(layers.Dense(2)),
        ]
    )


@seeded
def bidirectional_time_distributed() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((None, FEATURES)),
            layers.Bidirectional(layers.LSTM(4, return_sequences=True)),
            layers.TimeDistributed(layers.Dense(2, activation="softmax")),
        ]
    )


@seeded
def token_classifier() -> keras.Model:
    """Text classification: masked token ids -> LSTM -> softmax."""
    return keras.Sequential(
        [
            _tokens(),
            layers.Embedding(VOCAB, 8, mask_zero=True),
            layers.LSTM(8),
            layers.Dense(3, activation="softmax"),
        ]
    )


@seeded
def token_tagger() -> keras.Model:
    """Tagging: masked token ids -> Bidirectional GRU -> a tag distribution per token."""
    return keras.Sequential(
        [
            _tokens(),
            layers.Embedding(VOCAB, 8, mask_zero=True),
            layers.Bidirectional(layers.GRU(4, return_sequences=True)),
            layers.TimeDistributed(layers.Dense(3, activation="softmax")),
        ]
    )


@seeded
def token_unmasked_aligned() -> keras.Model:
    """Token ids without mask_zero, causal: steps one token at a time in sessions."""
    return keras.Sequential(
        [
            _tokens(),
            layers.Embedding(VOCAB, 6),
            layers.GRU(8, return_sequences=True),
            layers.Dense(3),
        ]
    )


@seeded
def token_conv_many_to_one() -> keras.Model:
    return keras.Sequential(
        [
            _tokens(),
            layers.Embedding(VOCAB, 6, mask_zero=True),
            layers.Conv1D(5, 3, padding="causal", activation="relu"),
            layers.GRU(6),
            layers.Dense(2),
        ]
    )


@seeded
def multi_head_attention() -> keras.Model:
    """Self-attention over LSTM outputs, pooled over time."""
    inp = keras.Input((None, FEATURES))
    x = layers.LSTM(8, return_sequences=True)(inp)
    x = layers.MultiHeadAttention(num_heads=2, key_dim=4)(x, x)
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inp, layers.Dense(2)(x))


@seeded
def dot_attention_aligned() -> keras.Model:
    inp = keras.Input((None, FEATURES))
    x = layers.GRU(8, return_sequences=True)(inp)
    x = layers.Attention()([x, x])
    x = layers.LayerNormalization()(x)
    return keras.Model(inp, layers.Dense(2)(x))


@seeded
def global_max_pooled() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((None, FEATURES)),
            layers.GRU(8, return_sequences=True),
            layers.GlobalMaxPooling1D(),
            layers.Dense(2),
        ]
    )


@seeded
def stacked_cells() -> keras.Model:
    cells = layers.StackedRNNCells([layers.LSTMCell(6), layers.GRUCell(4)])
    return keras.Sequential(
        [keras.Input((None, FEATURES)), layers.RNN(cells, return_sequences=True), layers.Dense(2)]
    )


@seeded
def gru_reset_before() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((None, FEATURES)),
            layers.GRU(8, reset_after=False, return_sequences=True),
            layers.Dense(2),
        ]
    )


@seeded
def dropout_layers() -> keras.Model:
    """Every dropout layer is the identity at inference; the recurrent dropouts too."""
    return keras.Sequential(
        [
            keras.Input((None, FEATURES)),
            layers.Dense(6),
            layers.SpatialDropout1D(0.3),
            layers.LSTM(8, return_sequences=True, dropout=0.2, recurrent_dropout=0.2),
            layers.GaussianDropout(0.2),
            layers.Dropout(0.5),
            layers.Dense(2),
        ]
    )


@seeded
def layer_norm_many_to_one() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((None, FEATURES)),
            layers.LSTM(8, return_sequences=True),
            layers.LayerNormalization(),
            layers.LSTM(4),
            layers.Dense(3, activation="softmax"),
        ]
    )


@seeded
def one_to_many_generator() -> keras.Model:
    inp = keras.Input((4,))
    x = layers.RepeatVector(5)(layers.Dense(6, activation="relu")(inp))
    x = layers.LSTM(6, return_sequences=True)(x)
    return keras.Model(inp, layers.TimeDistributed(layers.Dense(2))(x))


@seeded
def two_heads() -> keras.Model:
    """A classification head and a regression head on one LSTM summary."""
    inp = keras.Input((None, FEATURES))
    summary = layers.LSTM(8)(inp)
    label = layers.Dense(3, activation="softmax", name="label")(summary)
    value = layers.Dense(1, name="value")(summary)
    return keras.Model(inp, [label, value])


@seeded
def two_heads_aligned() -> keras.Model:
    """Two per-step heads (a dict of outputs): a tag distribution and a value per step."""
    inp = keras.Input((None, FEATURES))
    x = layers.GRU(8, return_sequences=True)(inp)
    tags = layers.Dense(2, activation="softmax")(x)
    return keras.Model(inp, {"tag": tags, "level": layers.Dense(1)(x)})


@seeded
def sequence_and_static() -> keras.Model:
    """A sequence summary joined with a static feature vector (many-to-one)."""
    steps = keras.Input((None, FEATURES), name="steps")
    static = keras.Input((2,), name="static")
    summary = layers.LSTM(8)(steps)
    joined = layers.Concatenate()([summary, layers.Dense(4, activation="relu")(static)])
    return keras.Model([steps, static], layers.Dense(2)(joined))


@seeded
def two_aligned_sequences() -> keras.Model:
    """Two sequences of one length, concatenated per step (aligned)."""
    a = keras.Input((None, FEATURES), name="a")
    b = keras.Input((None, 2), name="b")
    x = layers.GRU(6, return_sequences=True)(layers.Concatenate()([a, b]))
    return keras.Model([a, b], layers.Dense(2)(x))


@seeded
def tokens_and_numbers() -> keras.Model:
    """Token ids and a numeric value per step, embedded and joined (aligned tagging); the
    TimeDistributed head makes Keras' traced call wrong, so the graph path serves it."""
    ids = keras.Input((None,), dtype="int32", name="ids")
    level = keras.Input((None, 1), name="level")
    x = layers.Concatenate()([layers.Embedding(VOCAB, 4)(ids), level])
    x = layers.LSTM(6, return_sequences=True)(x)
    head = layers.TimeDistributed(layers.Dense(3, activation="softmax"))
    return keras.Model([ids, level], head(x))


@seeded
def seq2seq_teacher_forcing() -> keras.Model:
    """Encoder over T steps, decoder fed N target steps from the encoder's state: N steps out."""
    encoder = keras.Input((None, FEATURES), name="encoder")
    decoder = keras.Input((None, 2), name="decoder")
    _, h, c = layers.LSTM(8, return_state=True)(encoder)
    y = layers.LSTM(8, return_sequences=True)(decoder, initial_state=[h, c])
    return keras.Model([encoder, decoder], layers.Dense(2)(y))


@seeded
def several_in_out() -> keras.Model:
    """A dict of inputs (sequence + context vector) and two heads: label and value."""
    seq = keras.Input((None, FEATURES), name="seq")
    context = keras.Input((3,), name="context")
    x = layers.Concatenate()([layers.LSTM(8)(seq), context])
    label = layers.Dense(3, activation="softmax", name="label")(x)
    value = layers.Dense(1, name="value")(x)
    return keras.Model({"seq": seq, "context": context}, [label, value])


@seeded
def static_initial_state() -> keras.Model:
    """A device's attributes set the recurrent state its readings start from (aligned)."""
    steps = keras.Input((None, FEATURES), name="readings")
    device = keras.Input((4,), name="device")
    h = layers.Dense(6, activation="tanh")(device)
    c = layers.Dense(6)(device)
    y = layers.LSTM(6, return_sequences=True)(steps, initial_state=[h, c])
    return keras.Model([steps, device], layers.Dense(2)(y))


@seeded
def static_token_ids() -> keras.Model:
    """A user's static ids (embedded, flattened) joined with a summary of their clicks."""
    clicks = keras.Input((None, FEATURES), name="clicks")
    user = keras.Input((2,), dtype="int32", name="user")
    profile = layers.Flatten()(layers.Embedding(VOCAB, 3)(user))
    joined = layers.Concatenate()([layers.GRU(6)(clicks), profile])
    return keras.Model([clicks, user], layers.Dense(3, activation="softmax")(joined))


@seeded
def static_per_step() -> keras.Model:
    """A static vector repeated onto every step of a fixed-length sequence and concatenated
    with it (RepeatVector), then tagged per step, with a second per-step head."""
    steps = keras.Input((ENC_LEN, FEATURES), name="steps")
    context = keras.Input((2,), name="context")
    repeated = layers.RepeatVector(ENC_LEN)(layers.Dense(3)(context))
    x = layers.LSTM(6, return_sequences=True)(layers.Concatenate()([steps, repeated]))
    return keras.Model(
        [steps, context], [layers.Dense(2, name="tag")(x), layers.Dense(1, name="level")(x)]
    )


@seeded
def static_broadcast_add() -> keras.Model:
    """A static vector reshaped to one step ([batch, 1, features]) added to every step."""
    steps = keras.Input((None, FEATURES), name="steps")
    offset = keras.Input((FEATURES,), name="offset")
    shifted = layers.Add()([steps, layers.Reshape((1, FEATURES))(offset)])
    return keras.Model([steps, offset], layers.SimpleRNN(4)(shifted))


ZOO: dict[str, tuple[Builder, str, int | None]] = {
    "lstm_aligned": (lstm_aligned, "many_to_many_aligned", None),
    "gru_aligned": (gru_aligned, "many_to_many_aligned", None),
    "simple_rnn_aligned": (simple_rnn_aligned, "many_to_many_aligned", None),
    "stacked_lstm": (stacked_lstm, "many_to_many_aligned", None),
    "diff_forecaster": (diff_forecaster, "many_to_many_aligned", None),
    "fixed_length_aligned": (fixed_length_aligned, "many_to_many_aligned", ENC_LEN),
    "many_to_one": (many_to_one, "many_to_one", None),
    "masked_aligned": (masked_aligned, "many_to_many_aligned", None),
    "masked_many_to_one": (masked_many_to_one, "many_to_one", None),
    "encoder_decoder": (encoder_decoder, "many_to_many_unaligned", ENC_LEN),
    "encoder_decoder_dynamic": (encoder_decoder_dynamic, "many_to_many_unaligned", None),
    "seq2seq_states": (seq2seq_states, "many_to_many_unaligned", None),
    "cropped_tail": (cropped_tail, "many_to_many_unaligned", ENC_LEN),
    "flatten_many_to_one": (flatten_many_to_one, "many_to_one", ENC_LEN),
    "bidirectional": (bidirectional, "many_to_many_aligned", None),
    "bidirectional_many_to_one": (bidirectional_many_to_one, "many_to_one", None),
    "pooled_many_to_one": (pooled_many_to_one, "many_to_one", None),
}
STEPPER_CASES = list(ZOO)  # stepped chunk by chunk in-process (test_stepper.py)
ZOO.update(
    {
        "time_distributed_head": (time_distributed_head, "many_to_many_aligned", None),
        "masked_time_distributed": (masked_time_distributed, "many_to_many_aligned", None),
        "bidirectional_time_distributed": (
            bidirectional_time_distributed, "many_to_many_aligned", None,
        ),
        "token_classifier": (token_classifier, "many_to_one", None),
        "token_tagger": (token_tagger, "many_to_many_aligned", None),
        "token_unmasked_aligned": (token_unmasked_aligned, "many_to_many_aligned", None),
        "token_conv_many_to_one": (token_conv_many_to_one, "many_to_one", None),
        "multi_head_attention": (multi_head_attention, "many_to_one", None),
        "dot_attention_aligned": (dot_attention_aligned, "many_to_many_aligned", None),
        "global_max_pooled": (global_max_pooled, "many_to_one", None),
        "stacked_cells": (stacked_cells, "many_to_many_aligned", None),
        "gru_reset_before": (gru_reset_before, "many_to_many_aligned", None),
        "dropout_layers": (dropout_layers, "many_to_many_aligned", None),
        "layer_norm_many_to_one": (layer_norm_many_to_one, "many_to_one", None),
        "one_to_many_generator": (one_to_many_generator, "one_to_many", None),
        "dense_one_to_one": (dense_one_to_one, "one_to_one", None),
        "two_heads": (two_heads, "many_to_one", None),
        "two_heads_aligned": (two_heads_aligned, "many_to_many_aligned", None),
        "sequence_and_static": (sequence_and_static, "many_to_one", None),
        "two_aligned_sequences": (two_aligned_sequences, "many_to_many_aligned", None),
        "tokens_and_numbers": (tokens_and_numbers, "many_to_many_aligned", None),
        "seq2seq_teacher_forcing": (seq2seq_teacher_forcing, "many_to_many_unaligned", None),
        "several_in_out": (several_in_out, "many_to_one", None),
        "static_initial_state": (static_initial_state, "many_to_many_aligned", None),
        "static_token_ids": (static_token_ids, "many_to_one", None),
        "static_per_step": (static_per_step, "many_to_many_aligned", ENC_LEN),
        "static_broadcast_add": (static_broadcast_add, "many_to_one", None),
    }
)  # fmt: skip
SEVERAL_OUTPUTS = {"two_heads", "two_heads_aligned", "several_in_out", "static_per_step"}
# Several inputs (served with named_inputs): sequence inputs that must share one length per item
# (EQUAL_LENGTHS); the others take lengths of their own.
SEVERAL_INPUTS = {
    "sequence_and_static", "two_aligned_sequences", "tokens_and_numbers",
    "seq2seq_teacher_forcing", "several_in_out", "static_initial_state", "static_token_ids",
    "static_per_step", "static_broadcast_add",
}  # fmt: skip
# Sessions of several inputs or outputs: static inputs at open, sequence inputs stepped together.
# (seq2seq_teacher_forcing's inputs are on two time axes: no session.)
SEVERAL_SESSIONS = sorted((SEVERAL_INPUTS | SEVERAL_OUTPUTS) - {"seq2seq_teacher_forcing"})
EQUAL_LENGTHS = {"two_aligned_sequences", "tokens_and_numbers"}


# The fixture repository: the models the shared `server` fixture (tests/conftest.py) serves, one
# per mode and the architectures seqserve must serve, saved with configs exactly as an operator
# would lay a repository out (the server must not care where a model came from).


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


def lstm_many_to_one() -> keras.Model:
    inp = _seq()
    x = layers.LSTM(8)(inp)
    return keras.Model(inp, layers.Dense(4, activation="softmax")(x))


def aligned() -> keras.Model:
    inp = _seq()
    x = layers.LSTM(8, return_sequences=True)(inp)
    return keras.Model(inp, layers.Dense(2)(x))


def repeat_encoder_decoder() -> keras.Model:
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


def bare_gru_aligned() -> keras.Model:
    inp = _seq()
    return keras.Model(inp, layers.GRU(5, return_sequences=True)(inp))


def simple_rnn_many_to_one() -> keras.Model:
    inp = _seq()
    return keras.Model(inp, layers.Dense(2)(layers.SimpleRNN(6)(inp)))


def stacked_lstm_aligned() -> keras.Model:
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
    "classifier": (lstm_many_to_one, {"labels": ["w", "x", "y", "z"], "max_sequence_length": 50}),
    "aligned": (aligned, {"mode": "many_to_many_aligned"}),
    "enc_dec": (repeat_encoder_decoder, {}),
    "cropped": (cropped, {"mode": "many_to_many_unaligned"}),
    "gru": (bare_gru_aligned, {}),
    "simple_rnn": (simple_rnn_many_to_one, {}),
    "stacked": (stacked_lstm_aligned, {}),
    "stacked_bi": (stacked_bidirectional, {}),
    "conv": (conv_front_end, {}),
    "masked": (masked, {}),
    "fixed": (fixed_length, {}),
    "limited": (
        bare_gru_aligned,
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


def save_zoo(root: Path, names: Iterable[str]) -> Path:
    """The named zoo models saved as a repository (`<root>/<name>/1/model.keras`, no configs)."""
    for name in names:
        (root / name / "1").mkdir(parents=True)
        ZOO[name][0]().save(root / name / "1" / "model.keras")
    return root
