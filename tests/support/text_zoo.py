"""Text models the way Keras recommends building them: preprocessing inside the graph, raw
strings in (issue 24). Small, seeded, stock layers only (they load with safe_mode=True).

``TEXT_ZOO`` maps a name to ``(builder, mode, sessions)``: the mode the server must infer and
whether it serves sessions on it. ``texts``/``token_lists`` make inputs from the vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import layers

from tests.support.model_zoo import Builder, seeded

WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "le", "chat", "été", "über", "東京"]
LETTERS = list("abcdefghijklmnopqrstuvwxyzéü")
TAGS = ["DET", "NOUN", "VERB", "ADP"]
LABELS = ["neg", "neu", "pos"]
UNKNOWN = ["zzqx", "Blåbær", "🙂"]


def _words_in(shape: tuple[int, ...] = ()) -> keras.KerasTensor:
    return keras.Input(shape, dtype="string", name="text")


@seeded
def word_classifier() -> keras.Model:
    """A whole text -> TextVectorization (words) -> masked Embedding -> LSTM -> softmax."""
    text = _words_in()
    ids = layers.TextVectorization(max_tokens=40, vocabulary=WORDS)(text)
    x = layers.Embedding(40, 8, mask_zero=True)(ids)
    x = layers.LSTM(6)(x)
    return keras.Model(text, layers.Dense(3, activation="softmax")(x))


@seeded
def char_classifier() -> keras.Model:
    """A whole text, (1,)-shaped, split into characters -> GRU -> logits."""
    text = _words_in((1,))
    vectorize = layers.TextVectorization(split="character", vocabulary=LETTERS)
    ids = vectorize(text)
    x = layers.Embedding(len(LETTERS) + 2, 6, mask_zero=True)(ids)
    x = layers.GRU(5)(x)
    return keras.Model(text, layers.Dense(4)(x))


@seeded
def token_string_tagger() -> keras.Model:
    """One token string per step -> StringLookup -> Embedding -> LSTM -> a tag score per step."""
    tokens = keras.Input((None,), dtype="string", name="tokens")
    lookup = layers.StringLookup(vocabulary=WORDS)
    x = layers.Embedding(lookup.vocabulary_size(), 8)(lookup(tokens))
    x = layers.LSTM(6, return_sequences=True)(x)
    return keras.Model(tokens, layers.Dense(len(TAGS))(x))


@seeded
def token_string_summary() -> keras.Model:
    """Token strings (masked: the empty token is the mask) -> GRU -> a vector."""
    tokens = keras.Input((None,), dtype="string", name="tokens")
    lookup = layers.StringLookup(vocabulary=WORDS, mask_token="")
    x = layers.Embedding(lookup.vocabulary_size(), 8, mask_zero=True)(lookup(tokens))
    x = layers.GRU(6)(x)
    return keras.Model(tokens, layers.Dense(3)(x))


@seeded
def text_label() -> keras.Model:
    """A whole text -> a label as a string (argmax -> StringLookup(invert=True))."""
    text = _words_in()
    ids = layers.TextVectorization(max_tokens=40, vocabulary=WORDS)(text)
    x = layers.Embedding(40, 8, mask_zero=True)(ids)
    scores = layers.Dense(len(LABELS))(layers.LSTM(6)(x))
    best = keras.ops.argmax(scores, axis=-1)
    label = layers.StringLookup(vocabulary=LABELS, invert=True, num_oov_indices=0)(best)
    return keras.Model(text, label)


@seeded
def tag_strings() -> keras.Model:
    """Token strings per step -> a tag string per step."""
    tokens = keras.Input((None,), dtype="string", name="tokens")
    lookup = layers.StringLookup(vocabulary=WORDS)
    x = layers.Embedding(lookup.vocabulary_size(), 8)(lookup(tokens))
    scores = layers.Dense(len(TAGS))(layers.LSTM(6, return_sequences=True)(x))
    best = keras.ops.argmax(scores, axis=-1)
    return keras.Model(tokens, layers.StringLookup(vocabulary=TAGS, invert=True,
                                                   num_oov_indices=0)(best))  # fmt: skip


@seeded
def text_and_numbers() -> keras.Model:
    """A whole text and a numeric vector (its author's features), joined -> softmax."""
    text = _words_in()
    numbers = keras.Input((2,), name="numbers")
    ids = layers.TextVectorization(max_tokens=40, vocabulary=WORDS)(text)
    x = layers.LSTM(5)(layers.Embedding(40, 6, mask_zero=True)(ids))
    x = layers.Concatenate()([x, layers.Dense(3)(numbers)])
    return keras.Model({"text": text, "numbers": numbers}, layers.Dense(3, activation="softmax")(x))


@seeded
def tokens_and_values() -> keras.Model:
    """A token string and a number per step, joined (aligned)."""
    tokens = keras.Input((None,), dtype="string", name="tokens")
    values = keras.Input((None, 1), name="values")
    lookup = layers.StringLookup(vocabulary=WORDS)
    x = layers.Concatenate()(
        [layers.Embedding(lookup.vocabulary_size(), 6)(lookup(tokens)), values]
    )
    x = layers.GRU(5, return_sequences=True)(x)
    return keras.Model({"tokens": tokens, "values": values}, layers.Dense(2)(x))


TEXT_ZOO: dict[str, tuple[Builder, str, bool]] = {
    "word_classifier": (word_classifier, "many_to_one", False),
    "char_classifier": (char_classifier, "many_to_one", False),
    "token_string_tagger": (token_string_tagger, "many_to_many_aligned", True),
    "token_string_summary": (token_string_summary, "many_to_one", True),
    "text_label": (text_label, "many_to_one", False),
    "tag_strings": (tag_strings, "many_to_many_aligned", False),
    "text_and_numbers": (text_and_numbers, "many_to_one", False),
    "tokens_and_values": (tokens_and_values, "many_to_many_aligned", True),
}


def save_text_zoo(root: Path) -> Path:
    for name, (build, _, _) in TEXT_ZOO.items():
        (root / name / "1").mkdir(parents=True)
        build().save(root / name / "1" / "model.keras")
    return root


def texts(rng: np.random.Generator, count: int) -> list[str]:
    """Texts of 1 to 8 words, known and unknown, some capitalised with punctuation."""
    out = []
    for _ in range(count):
        words = [_word(rng) for _ in range(int(rng.integers(1, 9)))]
        text = " ".join(words)
        out.append(text.capitalize() + "!" if rng.random() < 0.3 else text)
    return out


def token_lists(rng: np.random.Generator, lengths: list[int]) -> list[list[str]]:
    return [[_word(rng) for _ in range(n)] for n in lengths]


def _word(rng: np.random.Generator) -> str:
    pool = WORDS if rng.random() < 0.8 else UNKNOWN
    return str(pool[int(rng.integers(len(pool)))])
