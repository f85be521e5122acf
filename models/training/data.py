"""Datasets, seeded splits and naive baselines shared by training and the quality gates
(tests/models/test_model_quality.py).

Everything here is deterministic and comes from data bundled in installed packages (no downloads),
so the quality tests recompute exactly the held-out sets the models were scored on.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import cache

import numpy as np
from sklearn.datasets import load_digits, load_iris
from sklearn.model_selection import train_test_split

SEED = 1234
IRIS_LABELS = ["setosa", "versicolor", "virginica"]
DIGIT_LABELS = [str(d) for d in range(10)]
DIGIT_MAX = 16.0  # sklearn digits pixels are integers 0..16
HELD_OUT_FRACTION = 0.2  # co2: last 20% of time is never trained on
CO2_CONTEXT = 52  # weeks of history the 13-week forecasters read
CO2_HORIZON = 13  # weeks ahead they forecast
SEASON = 52  # weeks per (approximate) year, for the seasonal-naive baselines
CO2_INTERVAL_CONTEXT = 104  # weeks co2_interval reads before each held-out week it is scored on


@dataclass(frozen=True)
class Split:
    """A supervised train/held-out split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@cache
def iris_split() -> Split:
    """Iris, stratified 70/30; raw measurements in cm, integer class labels."""
    data = load_iris()
    x = data.data.astype("float32")
    xtr, xte, ytr, yte = train_test_split(
        x, data.target, test_size=0.3, stratify=data.target, random_state=SEED
    )
    return Split(xtr, ytr, xte, yte)


@cache
def digits_split() -> Split:
    """sklearn digits as (8 rows, 8 columns) sequences of raw 0..16 pixels, stratified 75/25."""
    data = load_digits()
    x = data.images.astype("float32")  # (n, 8, 8): time axis = image row
    xtr, xte, ytr, yte = train_test_split(
        x, data.target, test_size=0.25, stratify=data.target, random_state=SEED
    )
    return Split(xtr, ytr, xte, yte)


def one_hot(labels: np.ndarray, width: int = 10) -> np.ndarray:
    """Float one-hot rows, the digit_generator's input format."""
    return np.eye(width, dtype="float32")[np.asarray(labels)]


def class_means(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean image per digit class, shape (10, 8, 8)."""
    return np.stack([images[labels == k].mean(axis=0) for k in range(10)])


@dataclass(frozen=True)
class Co2:
    """Weekly Mauna Loa CO2 (ppm), gaps linearly interpolated in time."""

    dates: np.ndarray  # datetime64[D], one per week
    ppm: np.ndarray  # float32 (n,)
    observed: np.ndarray  # bool (n,): False where the value was interpolated
    split: int  # first held-out index: targets at or after it are never trained on


@cache
def co2_series() -> Co2:
    """The statsmodels co2 series (1958-2001); held-out = last 20% of weeks."""
    from statsmodels.datasets import co2

    raw = co2.load_pandas().data["co2"]
    filled = raw.interpolate(method="time").bfill()
    n = len(filled)
    return Co2(
        dates=raw.index.to_numpy().astype("datetime64[D]"),
        ppm=filled.to_numpy(dtype="float32"),
        observed=~raw.isna().to_numpy(),
        split=round(n * (1 - HELD_OUT_FRACTION)),
    )


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    """Root mean squared error over all elements."""
    diff = np.asarray(pred, dtype="float64") - np.asarray(truth, dtype="float64")
    return float(np.sqrt(np.mean(diff**2)))


# --- co2_next_week: one prediction per input step ------------------------------------------


def next_week_eval_window(warmup: int = 104) -> tuple[np.ndarray, np.ndarray, int]:
    """Input sequence for the held-out score: `warmup` training weeks of context, then held-out.

    Returns (inputs (n-1,), next-week targets (n-1,), index of the first scored step). The
    context weeks only warm the recurrent state; scored targets all lie in the held-out part.
    """
    s = co2_series()
    start = s.split - warmup
    x = s.ppm[start:-1]
    y = s.ppm[start + 1 :]
    first_scored = warmup - 1  # x[first_scored] is the last training week; its target is held-out
    return x, y, first_scored


# --- co2_interval: the next week (point and interval) after a window of weeks ---------------


def next_week_windows(context: int = CO2_INTERVAL_CONTEXT) -> tuple[np.ndarray, np.ndarray]:
    """Held-out windows: (inputs (m, context, 1), next-week targets (m,)) in raw ppm.

    One window per held-out week (every target lies in the last 20%); a window holds the
    `context` weeks before its target, so the first ones reach back into training weeks.
    """
    s = co2_series()
    ends = np.arange(s.split, len(s.ppm))  # target indices
    x = np.stack([s.ppm[t - context : t] for t in ends])
    return x[..., None], s.ppm[ends]


# --- 13-week forecasters: windows of 52 weeks -> next 13 weeks ------------------------------


def forecast_origins(lo: int, hi: int) -> np.ndarray:
    """Indices t of the last observed week such that input t-51..t and targets t+1..t+13 fit.

    Only origins whose inputs start at or after `lo` and whose last target is before `hi`.
    """
    return np.arange(lo + CO2_CONTEXT - 1, hi - CO2_HORIZON)


def forecast_windows(origins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inputs (m, 52, 1), targets (m, 13, 1)) in raw ppm for the given origins."""
    ppm = co2_series().ppm
    past = np.stack([ppm[t - CO2_CONTEXT + 1 : t + 1] for t in origins])
    future = np.stack([ppm[t + 1 : t + 1 + CO2_HORIZON] for t in origins])
    return past[..., None], future[..., None]


def forecast_test_origins() -> np.ndarray:
    """Held-out origins: every target week lies in the last 20% (inputs may precede it)."""
    s = co2_series()
    return np.arange(s.split - 1, len(s.ppm) - CO2_HORIZON)


def forecast_baselines(origins: np.ndarray) -> dict[str, np.ndarray]:
    """Naive 13-week forecasts (m, 13, 1) for each origin, using the series' past only.

    persistence: last observed value; seasonal naive: the value 52 weeks before each target;
    seasonal naive with drift: that value shifted by the last year's change x_t - x_{t-52}.
    """
    ppm = co2_series().ppm
    h = np.arange(1, CO2_HORIZON + 1)
    last = ppm[origins][:, None]
    seasonal = ppm[origins[:, None] + h[None, :] - SEASON]
    drift = ppm[origins][:, None] - ppm[origins - SEASON][:, None]
    out = {
        "persistence": np.repeat(last, CO2_HORIZON, axis=1),
        "seasonal naive": seasonal,
        "seasonal naive with drift": seasonal + drift,
    }
    return {k: v[..., None].astype("float32") for k, v in out.items()}


# --- word_language: a word's language from its characters (wordfreq's bundled word lists) ---

WORD_LANGUAGES = ["cs", "de", "en", "es", "fi", "fr", "it", "nl", "pl", "pt", "sv", "tr"]
WORD_LANGUAGE_NAMES = {
    "cs": "Czech", "de": "German", "en": "English", "es": "Spanish", "fi": "Finnish",
    "fr": "French", "it": "Italian", "nl": "Dutch", "pl": "Polish", "pt": "Portuguese",
    "sv": "Swedish", "tr": "Turkish",
}  # fmt: skip
WORDS_PER_LANGUAGE = 30000  # candidates: the most frequent alphabetic words of 3..20 characters
WORDS_EXCLUSION_DEPTH = 100000  # a word in another language's top-N list is ambiguous: dropped
WORD_MIN_CHARS, WORD_MAX_CHARS = 3, 20
PAD_ID, UNKNOWN_ID, FIRST_CHAR_ID = 0, 1, 2


@dataclass(frozen=True)
class Words:
    """Word-language split: words, integer language labels, and the training alphabet."""

    train: list[str]
    y_train: np.ndarray
    test: list[str]
    y_test: np.ndarray
    alphabet: str  # sorted characters seen in training words; id = FIRST_CHAR_ID + index


@cache
def word_language_split() -> Words:
    """Unambiguous frequent words per language, stratified 80/20 (no downloads: wordfreq's data).

    A word kept for one language appears in no other language's top WORDS_EXCLUSION_DEPTH list,
    which removes shared words ("hotel", "de") and most loanwords and names.
    """
    from wordfreq import top_n_list

    wide = {lang: set(top_n_list(lang, WORDS_EXCLUSION_DEPTH)) for lang in WORD_LANGUAGES}
    words, labels = [], []
    for k, lang in enumerate(WORD_LANGUAGES):
        others = set().union(*(wide[o] for o in WORD_LANGUAGES if o != lang))
        for w in _candidate_words(lang):
            if w not in others:
                words.append(w)
                labels.append(k)
    wtr, wte, ytr, yte = train_test_split(
        words, np.array(labels), test_size=0.2, stratify=labels, random_state=SEED
    )
    return Words(wtr, ytr, wte, yte, "".join(sorted({c for w in wtr for c in w})))


def _candidate_words(lang: str) -> list[str]:
    """The language's most frequent purely alphabetic words of 3..20 characters."""
    from wordfreq import top_n_list

    ok = [
        w
        for w in top_n_list(lang, 2 * WORDS_PER_LANGUAGE)
        if w.isalpha() and WORD_MIN_CHARS <= len(w) <= WORD_MAX_CHARS
    ]
    return ok[:WORDS_PER_LANGUAGE]


def char_ids(word: str, alphabet: str) -> np.ndarray:
    """The model's input for one word: int32 ids, FIRST_CHAR_ID + alphabet index per character.

    The word is NFC-normalised and case-folded first, as wordfreq's lists are ("Straße" ->
    "strasse"); characters not in the alphabet become UNKNOWN_ID. PAD_ID (0) is padding and never
    appears inside a word.
    """
    index = {c: FIRST_CHAR_ID + i for i, c in enumerate(alphabet)}
    return np.array([index.get(c, UNKNOWN_ID) for c in fold_word(word)], dtype="int32")


def fold_word(word: str) -> str:
    """The text char_ids encodes, one id per character: NFC, then case-folded."""
    return unicodedata.normalize("NFC", word).casefold()


def padded_char_ids(words: list[str], alphabet: str) -> np.ndarray:
    """[n, longest] int32 ids, right-padded with PAD_ID (the model masks padding)."""
    rows = [char_ids(w, alphabet) for w in words]
    out = np.full((len(rows), max(len(r) for r in rows)), PAD_ID, dtype="int32")
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def word_language_naive_bayes() -> np.ndarray:
    """Held-out predictions of a character 1-5-gram multinomial naive Bayes (the strong baseline).

    Word-boundary n-grams (`char_wb`), counts, alpha 0.1 (the best of 0.1/0.3/1.0 and n up to
    3/4/5 on this split, so the baseline is if anything flattered).
    """
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.naive_bayes import MultinomialNB

    s = word_language_split()
    vectorizer = CountVectorizer(analyzer="char_wb", ngram_range=(1, 5))
    nb = MultinomialNB(alpha=0.1).fit(vectorizer.fit_transform(s.train), s.y_train)
    return nb.predict(vectorizer.transform(s.test))
