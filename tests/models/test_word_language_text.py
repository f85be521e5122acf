"""word_language_text: word_language with its tokenizer inside, taking the word as a string."""

from __future__ import annotations

from functools import cache

import keras
import numpy as np
import pytest

from models.cards import card_metadata
from models.training import data
from seqserve_client import SeqServeClient
from tests.support.bundled import MODELS

SAMPLE = 100  # held-out words re-checked here (the card records all of them)


@cache
def _model(name: str) -> keras.Model:
    return keras.saving.load_model(MODELS / name / "1" / "model.keras", safe_mode=True)


def test_the_card_records_agreement_on_every_held_out_word() -> None:
    evaluation = card_metadata(MODELS / "word_language_text")["evaluation"]
    assert evaluation["passed"] and evaluation["extra"]["agreement_with_word_language"] == 1.0
    ids_card = card_metadata(MODELS / "word_language")["evaluation"]
    assert evaluation["score"] == pytest.approx(ids_card["score"], abs=1e-9)


def test_text_gives_what_the_ids_give_on_held_out_words() -> None:
    words = data.word_language_split()
    picked = np.random.default_rng(0).choice(len(words.test), SAMPLE, replace=False)
    text, ids = _model("word_language_text"), _model("word_language")
    for i in picked.tolist():
        word = words.test[i]
        by_text = text(np.array([word], dtype=object), training=False)
        by_ids = ids(data.char_ids(word, words.alphabet)[None], training=False)
        np.testing.assert_allclose(by_text, by_ids, rtol=1e-5, atol=1e-6, err_msg=word)


def test_capitals_fold_to_their_small_letters() -> None:
    text = _model("word_language_text")
    for word in ("Straße", "ÜBER", "Kiitos", "ÉTÉ"):
        small = word.lower()
        np.testing.assert_allclose(
            text(np.array([word], dtype=object), training=False),
            text(np.array([small], dtype=object), training=False),
            rtol=1e-6, atol=1e-7, err_msg=word,
        )  # fmt: skip


def test_served_from_a_python_string(bundled: SeqServeClient) -> None:
    words = ["bonjour", "thanks", "Kiitos"]  # ("Straße": "ß" folds to "ss" client-side only)
    top = bundled.classify("word_language_text", words, top_k=1)
    meta = bundled.metadata("word_language_text")
    assert meta.input.dtype == "string" and meta.session_support == "session_unsupported"
    want = bundled.classify(
        "word_language", [data.char_ids(w, data.word_language_split().alphabet) for w in words],
        top_k=1,
    )  # fmt: skip
    assert [t[0][0] for t in top] == [w[0][0] for w in want]
