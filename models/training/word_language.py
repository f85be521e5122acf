"""word_language (many_to_one, token ids): a word's language from its characters."""

from __future__ import annotations

from collections.abc import Iterator

import keras
import numpy as np

from models.training import data, evaluate
from models.training.common import Artifact, seed_everything

NAME = "word_language"
EPOCHS = 12
BATCH_SIZE = 256


def build(vocabulary_size: int) -> keras.Model:
    """Char ids -> masked embedding -> GRU: a unidirectional reader, so sessions can step it."""
    inputs = keras.Input(shape=(None,), dtype="int32", name="char_ids")
    h = keras.layers.Embedding(vocabulary_size, 32, mask_zero=True, name="char_embedding")(inputs)
    h = keras.layers.GRU(128, name="reader")(h)
    h = keras.layers.Dropout(0.3, name="regularize")(h)  # active in training only
    outputs = keras.layers.Dense(len(data.WORD_LANGUAGES), activation="softmax", name="language")(h)
    return keras.Model(inputs, outputs, name=NAME)


def length_batches(words: data.Words, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of shuffled batches whose words all have one length (no padding to compute)."""
    ids = [data.char_ids(w, words.alphabet) for w in words.train]
    lengths = np.array([len(r) for r in ids])
    rng = np.random.default_rng(seed)
    groups = []
    for n in np.unique(lengths):
        members = rng.permutation(np.flatnonzero(lengths == n))
        groups += [members[k : k + BATCH_SIZE] for k in range(0, len(members), BATCH_SIZE)]
    for j in rng.permutation(len(groups)):
        yield np.stack([ids[i] for i in groups[j]]), words.y_train[groups[j]]


def train() -> Artifact:
    """Fit on the stratified 80% of the words; score on the held-out 20%."""
    seed_everything(data.SEED)
    words = data.word_language_split()
    model = build(data.FIRST_CHAR_ID + len(words.alphabet))
    # A fixed optimizer name: Keras numbers unnamed ones per process (adam_6 in make models),
    # which would make the saved bytes depend on what trained before.
    model.compile(keras.optimizers.Adam(3e-3, name="adam"), loss="sparse_categorical_crossentropy")
    for epoch in range(EPOCHS):
        for x, y in length_batches(words, data.SEED + epoch):
            model.train_on_batch(x, y)
    return describe(model, words)


def describe(model: keras.Model, words: data.Words) -> Artifact:
    """The trained model with its config, card text and held-out evaluation."""
    names = ", ".join(f"{k} {data.WORD_LANGUAGE_NAMES[k]}" for k in data.WORD_LANGUAGES)
    return Artifact(
        name=NAME,
        model=model,
        mode="many_to_one",
        description=f"Language of a single word from its characters: {names}. Input is "
        "character ids: see `vocabulary` in its MODEL_CARD.md.",
        input_description="[batch, steps] int32 character ids, one step per character of the "
        "NFC-normalised, case-folded word: id = 2 + index in `vocabulary.alphabet`, 1 for any "
        "other character, 0 = padding (masked; send ragged words unpadded)",
        output_description=f"[batch, {len(data.WORD_LANGUAGES)}] class probabilities (softmax) "
        "over the labels (ISO 639-1 codes)",
        labels=data.WORD_LANGUAGES,
        max_sequence_length=64,
        evaluation=evaluate.word_language(model),
        card_body=card(words),
        card_data={"vocabulary": vocabulary(words.alphabet)},
    )


def vocabulary(alphabet: str) -> dict[str, object]:
    """The char -> id mapping a client needs, written into the card's front matter."""
    return {
        "alphabet": alphabet,
        "first_char_id": data.FIRST_CHAR_ID,
        "unknown_id": data.UNKNOWN_ID,
        "padding_id": data.PAD_ID,
        "normalization": "NFC, then str.casefold()",
    }


def card(words: data.Words) -> str:
    """Model-specific card text (data, encoding, design, caveats)."""
    per_language = np.bincount(np.concatenate([words.y_train, words.y_test]))
    counts = ", ".join(f"{k} {n}" for k, n in zip(data.WORD_LANGUAGES, per_language, strict=True))
    return f"""
## Data

The word lists that ship inside the `wordfreq` package (3.1, no download at train time). For
each language, its {data.WORDS_PER_LANGUAGE} most frequent purely alphabetic words of
{data.WORD_MIN_CHARS}-{data.WORD_MAX_CHARS} characters; a word that also appears in another
language's top {data.WORDS_EXCLUSION_DEPTH} is dropped as ambiguous ("hotel", "de", loanwords,
names). Words per language: {counts}.
Split 80/20 stratified by language, `random_state={data.SEED}`.

## Input encoding (what a client sends)

One int32 id per character of the NFC-normalised, case-folded word (`str.casefold()`, as in
wordfreq's lists: "Straße" -> "strasse"):

- id = {data.FIRST_CHAR_ID} + the character's index in this alphabet (the characters seen in
  training words, sorted by code point; also in this card's front matter, `vocabulary.alphabet`):
  `{words.alphabet}`
- id {data.UNKNOWN_ID} = any other character (never seen in training: expect a weaker guess);
- id {data.PAD_ID} = padding, masked by the `Embedding` (`mask_zero=True`); send words of
  different lengths as a ragged batch, or right-pad a dense batch with {data.PAD_ID}.

`models.training.data.char_ids(word, alphabet)` is the reference encoder;
`python -m models.examples.word_language bonjour thanks` shows it against a server.

## Model

`Embedding({data.FIRST_CHAR_ID + len(words.alphabet)}, 32, mask_zero=True)` ->
`GRU(128)` -> `Dropout(0.3)` (training only) -> `Dense({len(data.WORD_LANGUAGES)}, softmax)`.
Unidirectional, so a word can be read one character per step. Adam 3e-3, {EPOCHS} epochs of
batches of {BATCH_SIZE} words of one length each (no padding in training).

## Baselines

The majority class (table above) and a character 1-5-gram multinomial naive Bayes
(`CountVectorizer(analyzer="char_wb", ngram_range=(1, 5))` + `MultinomialNB(alpha=0.1)`, fitted
on the same training words; settings were the best of a few tried). The naive Bayes is the
stronger of the two and, honestly, **stronger than this GRU**: n-gram counts are close to ideal
for one isolated word, and the GRU is kept small so that `make models` trains it in minutes on
2 cores. The model is here to show integer token ids served exactly; the gate asks for a
useful classifier (accuracy >= {evaluate.WORD_LANGUAGE_MIN_ACCURACY}, against a majority class
near 0.1), not for the best one.

## Caveats

One word carries little evidence: close languages (es/pt/it, nl/de, sv) and short words are
confused most. Frequent words only; rare words, names and words shared between languages were
not evaluated. The `unknown` id was never seen in training, so a word with characters outside
the alphabet (another script, or a letter these languages do not use) gets a weaker guess.
"""
