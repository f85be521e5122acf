"""word_language_text (many_to_one, text in): word_language taking the word itself as a string.

The same trained network as word_language, with the tokenizer inside the model: a
`TextVectorization(split="character")` whose vocabulary is word_language's alphabet makes the
character ids a client of word_language computes by hand (0 padding, 1 unknown, 2 + alphabet
index). Capital letters are folded inside too: the vocabulary also lists the capital of every
alphabet letter that has one of its own, and every `Embedding` fed by the ids gets a copy of the
small letter's row for it. So the caller sends "Hello" and gets what word_language gives "hello".
"""

from __future__ import annotations

import keras
import numpy as np

from models.training import data, evaluate
from models.training.common import Artifact

NAME = "word_language_text"


def capitals(alphabet: str) -> list[tuple[str, str]]:
    """(capital, small) for each alphabet letter whose upper case is one other character not
    itself in the alphabet ("é" -> "É"; not "ß", whose upper case is "SS"); a capital two
    letters share ("I" of "i" and of Turkish dotless i) folds to the first in the alphabet's
    order."""
    out: dict[str, str] = {}
    for small in alphabet:
        big = small.upper()
        if len(big) == 1 and big != small and big not in alphabet:
            out.setdefault(big, small)
    return list(out.items())


def wrap(ids_model: keras.Model, alphabet: str) -> keras.Model:
    """A text input in front of a copy of `ids_model` whose Embeddings take the folded ids."""
    folded = capitals(alphabet)
    size = data.FIRST_CHAR_ID + len(alphabet) + len(folded)
    rows = [data.FIRST_CHAR_ID + alphabet.index(small) for _, small in folded]
    body = keras.models.clone_model(ids_model, clone_function=_widened(size))
    for old, new in zip(ids_model.layers, body.layers, strict=True):
        weights = old.get_weights()
        if isinstance(old, keras.layers.Embedding):
            weights = [np.concatenate([weights[0], weights[0][rows]])]
        new.set_weights(weights)
    text = keras.Input((), dtype="string", name="word")
    vectorize = keras.layers.TextVectorization(
        standardize=None, split="character", vocabulary=list(alphabet) + [b for b, _ in folded],
        name="characters",
    )  # fmt: skip
    return keras.Model(text, body(vectorize(text)), name=NAME)


def _widened(size: int) -> object:
    """clone_model's layer factory: Embeddings of `size` ids, every other layer as it was."""

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if isinstance(layer, keras.layers.Embedding):
            config["input_dim"] = size
        return layer.__class__.from_config(config)

    return clone


def train(ids_model: keras.Model) -> Artifact:
    """Wrap the freshly trained (or shipped) word_language; no training of its own."""
    words = data.word_language_split()
    model = wrap(ids_model, words.alphabet)
    return Artifact(
        name=NAME,
        model=model,
        mode="many_to_one",
        description="Language of a single word, sent as text: word_language with its "
        "character tokenizer inside (cs de en es fi fr it nl pl pt sv tr).",
        input_description="[batch] one word per item as a UTF-8 string (NFC; capitals are "
        "folded inside the model, one character each)",
        output_description=f"[batch, {len(data.WORD_LANGUAGES)}] class probabilities (softmax) "
        "over the labels (ISO 639-1 codes)",
        labels=data.WORD_LANGUAGES,
        evaluation=evaluate.word_language_text(model, ids_model),
        card_body=card(words.alphabet),
    )


def card(alphabet: str) -> str:
    folded = "".join(big for big, _ in capitals(alphabet))
    return f"""
## Model

word_language's network unchanged (its card has the data, training and caveats), behind a
`TextVectorization(standardize=None, split="character")` whose vocabulary is word_language's
alphabet ({len(alphabet)} characters) followed by {len(folded)} capitals ({folded}): each capital's
id reads the embedding rows of its small letter, so a capital gives exactly what its small
letter gives. Characters outside both are unknown (id 1), as for word_language.

## Differences from word_language's client-side folding

word_language's clients fold a word with `unicodedata.normalize("NFC", w).casefold()`. Inside
the graph only what one character maps to one character is folded: "ß" stays "ß" (casefold
makes "ss"; "ß" is not in the alphabet, so it is unknown here), and decomposed accents (e +
U+0301) are two characters (send NFC text). On the held-out words (already folded) the two
models agree on every word (the gate above).

## Sessions

A whole word per item is tokenized inside the model: sessions are refused (metadata says why).
To read a word one character at a time, use word_language's sessions (character ids).
"""
