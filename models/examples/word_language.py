"""Guess the language of words from their characters, sent as integer character ids.

python -m models.examples.word_language bonjour hello Straße --target 127.0.0.1:8500
(without words: one held-out word per language, with its true language)
"""

from __future__ import annotations

import numpy as np
import yaml

from models.examples._shared import format_top_k, parse_args
from models.training import data
from models.training.common import MODELS_DIR
from seqserve_client import SeqServeClient

MODEL = "word_language"


def alphabet() -> str:
    """The character -> id mapping as a client gets it: from the model's config.yaml."""
    config = yaml.safe_load((MODELS_DIR / MODEL / "config.yaml").read_text())
    return config["vocabulary"]["alphabet"]


def held_out_examples() -> tuple[list[str], list[str]]:
    """The first held-out word of each language, and its language."""
    s = data.word_language_split()
    first = [int(np.flatnonzero(s.y_test == k)[0]) for k in range(len(data.WORD_LANGUAGES))]
    return [s.test[i] for i in first], [data.WORD_LANGUAGES[s.y_test[i]] for i in first]


def main() -> None:
    args = parse_args(__doc__, words=True)
    words, truth = (args.words, [""] * len(args.words)) if args.words else held_out_examples()
    chars = alphabet()
    ids = [data.char_ids(w, chars) for w in words]  # ragged: one int32 array per word, unpadded
    with SeqServeClient(args.target) as c:
        ranked = c.classify(MODEL, ids, top_k=3)
    for word, true, top in zip(words, truth, ranked, strict=True):
        named = [(f"{data.WORD_LANGUAGE_NAMES[k]} ({k})", p) for k, p in top]
        label = f" true={true}" if true else ""
        print(f"{word:16s}{label} top-3: {format_top_k(named)}")


if __name__ == "__main__":
    main()
