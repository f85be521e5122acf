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
LEARNING_RATE = 3e-3  # Adam, cosine-decayed to 0 over the run; weights averaged (EMA)
EMA_MOMENTUM = 0.995
LABEL_SMOOTHING = 0.1
CHAR_DIM, READER_UNITS = 96, 256  # the GRU path
NGRAM_CHAR_DIM, NGRAM_FILTERS = 48, 384  # the n-gram path: causal Conv1D over 3 and 5 chars
NGRAM_WIDTHS = (3, 5)


def build(vocabulary_size: int) -> keras.Model:
    """Two unidirectional paths over the character ids, their logits added (see the card).

    - reader: masked `Embedding` -> `GRU` (last state) -> `Dense(12)`;
    - n-grams: `Embedding` -> causal `Conv1D`s (n-gram detectors ending at each character) ->
      per-character `Dense(12)` logits, zeroed at padding, summed over the word by a frozen
      identity `SimpleRNN` (a running sum: h_t = x_t + h_{t-1}).

    Every layer is causal or recurrent left to right, so sessions read a word one character
    per step. Padding is masked on the reader and multiplied by 0 on the n-gram path (Keras'
    merge layers drop a mask when a merged tensor has none, so the n-gram path carries none).
    """
    n = len(data.WORD_LANGUAGES)
    inputs = keras.Input(shape=(None,), dtype="int32", name="char_ids")
    h = keras.layers.Embedding(vocabulary_size, CHAR_DIM, mask_zero=True, name="char_embedding")(
        inputs
    )
    h = keras.layers.GRU(READER_UNITS, name="reader")(h)
    h = keras.layers.Dropout(0.3, name="regularize")(h)  # active in training only
    word_logits = keras.layers.Dense(n, name="reader_logits")(h)

    c = keras.layers.Embedding(vocabulary_size, NGRAM_CHAR_DIM, name="ngram_char_embedding")(inputs)
    grams = [
        keras.layers.Conv1D(
            NGRAM_FILTERS, width, padding="causal", activation="relu", name=f"char_{width}grams"
        )(c)
        for width in NGRAM_WIDTHS
    ]
    g = keras.layers.Concatenate(name="ngrams")(grams)
    g = keras.layers.Dense(n, name="ngram_logits")(g)
    not_padding = _not_padding(inputs, vocabulary_size, n)
    g = keras.layers.Multiply(name="ngram_logits_unpadded")([g, not_padding])
    ngram_logits = _running_sum(g, n)

    logits = keras.layers.Add(name="logits")([word_logits, ngram_logits])
    outputs = keras.layers.Activation("softmax", name="language")(logits)
    return keras.Model(inputs, outputs, name=NAME)


def _not_padding(inputs: keras.KerasTensor, vocabulary_size: int, width: int) -> keras.KerasTensor:
    """[batch, steps, width]: 0 where the id is padding, else 1 (a frozen Embedding)."""
    table = np.ones((vocabulary_size, width), dtype="float32")
    table[data.PAD_ID] = 0.0
    layer = keras.layers.Embedding(vocabulary_size, width, trainable=False, name="not_padding")
    out = layer(inputs)
    layer.set_weights([table])
    return out


def _running_sum(x: keras.KerasTensor, width: int) -> keras.KerasTensor:
    """The sum over steps of x: a frozen linear SimpleRNN, kernel and recurrent kernel identity."""
    layer = keras.layers.SimpleRNN(
        width, activation="linear", use_bias=False, trainable=False, name="ngram_logit_sum"
    )
    out = layer(x)
    eye = np.eye(width, dtype="float32")
    layer.set_weights([eye, eye])
    return out


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


def batches_per_epoch(words: data.Words) -> int:
    """How many batches `length_batches` yields (the cosine schedule's length)."""
    lengths = np.bincount([len(data.fold_word(w)) for w in words.train])
    return int(sum(-(-count // BATCH_SIZE) for count in lengths if count))


def train() -> Artifact:
    """Fit on the stratified 80% of the words; score on the held-out 20%."""
    seed_everything(data.SEED)
    words = data.word_language_split()
    model = build(data.FIRST_CHAR_ID + len(words.alphabet))
    schedule = keras.optimizers.schedules.CosineDecay(
        LEARNING_RATE, EPOCHS * batches_per_epoch(words)
    )
    # A fixed optimizer name: Keras numbers unnamed ones per process (adam_6 in make models),
    # which would make the saved bytes depend on what trained before.
    optimizer = keras.optimizers.Adam(
        schedule, name="adam", use_ema=True, ema_momentum=EMA_MOMENTUM
    )
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=LABEL_SMOOTHING)
    model.compile(optimizer, loss=loss)
    one_hot = np.eye(len(data.WORD_LANGUAGES), dtype="float32")
    for epoch in range(EPOCHS):
        for x, y in length_batches(words, data.SEED + epoch):
            model.train_on_batch(x, one_hot[y])
    optimizer.finalize_variable_values(model.trainable_variables)  # the averaged weights
    # Ship the weights only: a fresh, uncompiled copy (the optimizer's moments and weight
    # averages would triple the file).
    shipped = build(data.FIRST_CHAR_ID + len(words.alphabet))
    shipped.set_weights(model.get_weights())
    return describe(shipped, words)


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
        card_body=card(words, model),
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


def card(words: data.Words, model: keras.Model) -> str:
    """Model-specific card text (data, encoding, design, caveats)."""
    per_language = np.bincount(np.concatenate([words.y_train, words.y_test]))
    counts = ", ".join(f"{k} {n}" for k, n in zip(data.WORD_LANGUAGES, per_language, strict=True))
    n = len(data.WORD_LANGUAGES)
    vocab = data.FIRST_CHAR_ID + len(words.alphabet)
    widths = " and ".join(str(w) for w in NGRAM_WIDTHS)
    params = f"{model.count_params():,}"
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

Two unidirectional paths over the character ids; their logits are added, then a softmax:

- reader: `Embedding({vocab}, {CHAR_DIM}, mask_zero=True)` -> `GRU({READER_UNITS})` (last state) ->
  `Dropout(0.3)` (training only) -> `Dense({n})` logits;
- n-grams: `Embedding({vocab}, {NGRAM_CHAR_DIM})` -> causal `Conv1D({NGRAM_FILTERS}, w, relu)` for
  w in {widths} (n-gram detectors ending at each character; the causal zero padding marks the
  start of the word) -> `Concatenate` -> per-character `Dense({n})` logits -> multiplied by 0 at
  padding (a frozen 0/1 `Embedding` of the ids) -> summed over the word by a frozen linear
  `SimpleRNN` whose kernel and recurrent kernel are the identity (a running sum).

Every layer is causal or recurrent left to right, so a session reads a word one character per
step and the server steps it exactly. {params} weights, float32. Trained {EPOCHS} epochs on
batches of {BATCH_SIZE} words of one length each (no padding in training): Adam {LEARNING_RATE},
cosine-decayed to 0, label smoothing {LABEL_SMOOTHING}; the shipped weights are the
exponential moving average (momentum {EMA_MOMENTUM}) of the trained ones. Only the weights are
saved (no optimizer state). Training takes about half an hour of `make models` (32 minutes
measured on 2 cores shared with other jobs). Architecture, epochs and data size were chosen on
a validation tenth carved out of the training words; the held-out 20% was scored only for the
shipped model.

## Baselines

The gate is a character 1-5-gram multinomial naive Bayes
(`CountVectorizer(analyzer="char_wb", ngram_range=(1, 5))` + `MultinomialNB(alpha=0.1)`, the
best of a few settings), refitted on exactly these training words and scored on exactly these
held-out words (evaluation above): the model must be more accurate. The majority class is in
`extra`. Naive Bayes over word-boundary n-grams is a strong baseline for one isolated word, and
the margin is small. What made the difference is data: with 10000 candidates per language
(exclusion depth 40000) the best networks tried reached 0.889 validation accuracy against
naive Bayes' 0.895; with {data.WORDS_PER_LANGUAGE} (depth {data.WORDS_EXCLUSION_DEPTH}) naive
Bayes rises only to 0.916 while this network reached 0.918 after 8 of its {EPOCHS} epochs
(validation run stopped there for time). On validation words a smaller variant of this
network was still worse than naive Bayes on short words (3-8 characters) and on the less
frequent classes (en, es, pt), and better on words of 9 or more characters.

## Caveats

One word carries little evidence: close languages (es/pt/it, nl/de, sv) and short words are
confused most. Frequent words only; rare words, names and words shared between languages were
not evaluated. The `unknown` id was never seen in training, so a word with characters outside
the alphabet (another script, or a letter these languages do not use) gets a weaker guess.
"""
