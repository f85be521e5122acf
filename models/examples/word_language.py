"""Guess the language of words, sent as text (word_language_text: the tokenizer is inside).

python -m models.examples.word_language bonjour thanks Straße --target 127.0.0.1:8500
(without words: one held-out word per language, with its true language). Then a session of
word_language (the same network on character ids) reads the first word one character per step
and prints the guess after each prefix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.cards import card_metadata
from models.examples._shared import format_top_k, parse_args
from models.training import data
from seqserve_client import SeqServeClient

MODEL = "word_language"  # character ids: sessions read a word a character at a time
TEXT_MODEL = "word_language_text"  # the word as a string
MODEL_DIR = Path(__file__).resolve().parents[1] / MODEL


def alphabet() -> str:
    """The character -> id mapping as a client gets it: from the model card's front matter."""
    return str(card_metadata(MODEL_DIR)["vocabulary"]["alphabet"])


def held_out_examples() -> tuple[list[str], list[str]]:
    """The first held-out word of each language, and its language."""
    s = data.word_language_split()
    first = [int(np.flatnonzero(s.y_test == k)[0]) for k in range(len(data.WORD_LANGUAGES))]
    return [s.test[i] for i in first], [data.WORD_LANGUAGES[s.y_test[i]] for i in first]


def named(ranked: list[tuple[str, float]]) -> list[tuple[str, float]]:
    return [(f"{data.WORD_LANGUAGE_NAMES[code]} ({code})", p) for code, p in ranked]


def main() -> None:
    args = parse_args(__doc__, words=True)
    words, truth = (args.words, [""] * len(args.words)) if args.words else held_out_examples()
    with SeqServeClient(args.target) as c:
        guesses = c.classify(TEXT_MODEL, words, top_k=3)  # raw strings in
        for word, true, top in zip(words, truth, guesses, strict=True):
            label = f" true={true}" if true else ""
            print(f"{word:16s}{label} top-3: {format_top_k(named(top))}")
        print(f"\n{words[0]!r} one character per session step:")
        ids = data.char_ids(words[0], alphabet())  # the card's mapping: what the text model does
        with c.session(MODEL, top_k=1) as s:  # the GRU state stays on the server between steps
            for n, char_id in enumerate(ids, start=1):
                step = s.step_full([int(char_id)])
                assert step is not None  # many-to-one sessions answer every step by default
                print(f"  {data.fold_word(words[0])[:n]:16s} {format_top_k(named(step.top_k[0]))}")


if __name__ == "__main__":
    main()
