"""Held-out quality gates, shared by training (to write the cards) and the quality tests.

Each function takes loaded Keras models, scores them on data they never saw, and returns an
`Evaluation` with the naive baseline beside the score, so a card can never claim a number the
tests do not recompute.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import keras
import numpy as np

from models.training import data

# Gate thresholds: accuracy floors, or RMSE ceilings as a fraction of the best baseline's RMSE.
IRIS_MIN_ACCURACY = 0.95
DIGIT_MIN_ACCURACY = 0.97
GENERATOR_MIN_AGREEMENT = 0.95
NEXT_WEEK_MAX_RATIO = 0.80
FORECAST_MAX_RATIO = 0.75
WORD_LANGUAGE_BASELINE = "char 1-5-gram naive Bayes"  # word_language must beat it
INTERVAL_MAX_RATIO = 0.80  # co2_interval: point MAE <= this x persistence's MAE
INTERVAL_COVERAGE = (0.7, 0.9)  # ... and its 80% interval covers this share of held-out weeks


@dataclass
class Evaluation:
    """A held-out score, its baseline and whether the gate passed."""

    metric: str
    score: float
    baseline_name: str
    baseline: float
    split: str
    gate: str
    passed: bool
    extra: dict[str, float] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, object]:
        """The `evaluation` mapping of the card's front matter (floats rounded for humans)."""
        out = asdict(self)
        for key in ("score", "baseline"):
            out[key] = round(out[key], 4)
        out["extra"] = {k: round(v, 4) for k, v in self.extra.items()}
        return out


def _predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Run the model eagerly on one batch (small data; avoids predict()'s tf.function setup)."""
    return keras.ops.convert_to_numpy(model(x, training=False))


def _accuracy(model: keras.Model, split: data.Split) -> tuple[float, float]:
    """(model accuracy, majority-class accuracy) on the held-out part."""
    acc = float(np.mean(_predict(model, split.x_test).argmax(-1) == split.y_test))
    majority = np.bincount(split.y_train).argmax()
    return acc, float(np.mean(split.y_test == majority))


def iris_classifier(model: keras.Model) -> Evaluation:
    """Accuracy on the stratified 30% iris hold-out."""
    acc, base = _accuracy(model, data.iris_split())
    return Evaluation(
        "accuracy", acc, "majority class", base,
        f"stratified 70/30 train/held-out split of 150 flowers (seed {data.SEED})",
        f"accuracy >= {IRIS_MIN_ACCURACY}", acc >= IRIS_MIN_ACCURACY,
    )  # fmt: skip


def digit_classifier(model: keras.Model) -> Evaluation:
    """Accuracy on the stratified 25% digits hold-out."""
    acc, base = _accuracy(model, data.digits_split())
    return Evaluation(
        "accuracy", acc, "majority class", base,
        f"stratified 75/25 train/held-out split of 1797 images (seed {data.SEED})",
        f"accuracy >= {DIGIT_MIN_ACCURACY}", acc >= DIGIT_MIN_ACCURACY,
    )  # fmt: skip


def digit_generator(generator: keras.Model, classifier: keras.Model) -> Evaluation:
    """Does the classifier read each generated digit as the requested class?

    The generator is deterministic (one image per class), so the gate is 10/10 agreement; the
    extras compare each image with the held-out class means, which neither model trained on.
    """
    split = data.digits_split()
    images = _predict(generator, data.one_hot(np.arange(10)))
    agreement = float(np.mean(_predict(classifier, images).argmax(-1) == np.arange(10)))
    held_means = data.class_means(split.x_test, split.y_test)
    train_means = data.class_means(split.x_train, split.y_train)
    dists = ((images[:, None] - held_means[None]) ** 2).mean(axis=(2, 3))  # (generated, class)
    extra = {
        "rmse_to_held_out_class_mean": data.rmse(images, held_means),
        "train_class_mean_rmse_to_held_out_class_mean": data.rmse(train_means, held_means),
        "nearest_held_out_class_mean_accuracy": float(np.mean(dists.argmin(1) == np.arange(10))),
    }
    return Evaluation(
        "classifier agreement", agreement, "chance", 0.1,
        "one generated image per class 0-9, judged by the shipped digit_classifier; extras vs "
        "class means of the digits held-out split",
        f"agreement >= {GENERATOR_MIN_AGREEMENT}", agreement >= GENERATOR_MIN_AGREEMENT, extra,
    )  # fmt: skip


def co2_next_week(model: keras.Model) -> Evaluation:
    """RMSE (ppm) of next-week predictions over the held-out last 20% of weeks."""
    x, y, first = data.next_week_eval_window()
    pred = _predict(model, x[None, :, None])[0, :, 0]
    score = data.rmse(pred[first:], y[first:])
    base = data.rmse(x[first:], y[first:])
    return Evaluation(
        "rmse_ppm", score, "persistence (next week = this week)", base,
        "last 20% of weeks (1993-04-03 onward) held out; the model reads the 104 training "
        "weeks before it as warm-up context, scored on held-out targets only",
        f"rmse <= {NEXT_WEEK_MAX_RATIO} x persistence", score <= NEXT_WEEK_MAX_RATIO * base,
        {"ratio_to_baseline": score / base},
    )  # fmt: skip


def co2_forecast(model: keras.Model) -> Evaluation:
    """RMSE (ppm) of 13-week forecasts from every held-out origin vs the best naive method."""
    origins = data.forecast_test_origins()
    x, y = data.forecast_windows(origins)
    score = data.rmse(_predict(model, x), y)
    baselines = {k: data.rmse(v, y) for k, v in data.forecast_baselines(origins).items()}
    best = min(baselines, key=baselines.get)
    extra = {f"baseline_{k.replace(' ', '_')}": v for k, v in baselines.items()}
    extra["ratio_to_baseline"] = score / baselines[best]
    return Evaluation(
        "rmse_ppm", score, best, baselines[best],
        f"{len(origins)} forecast origins whose 13 target weeks all lie in the held-out last 20% "
        "of weeks (1993-04-03 onward); inputs may reach back into training weeks",
        f"rmse <= {FORECAST_MAX_RATIO} x best of persistence, seasonal naive, seasonal naive "
        "with drift",
        score <= FORECAST_MAX_RATIO * baselines[best], extra,
    )  # fmt: skip


def co2_interval(model: keras.Model) -> Evaluation:
    """MAE (ppm) of the next-week point forecast at every held-out week, and the empirical
    coverage of the 80% interval there; the model reads the 104 weeks before each target."""
    x, y = data.next_week_windows()
    out = {k: keras.ops.convert_to_numpy(v) for k, v in model(x, training=False).items()}
    point, lower, upper = out["forecast"][:, 0], out["interval"][:, 0], out["interval"][:, 1]
    score = float(np.mean(np.abs(point - y)))
    base = float(np.mean(np.abs(x[:, -1, 0] - y)))
    coverage = float(np.mean((lower <= y) & (y <= upper)))
    low, high = INTERVAL_COVERAGE
    extra = {
        "ratio_to_baseline": score / base,
        "interval_coverage": coverage,
        "below_lower": float(np.mean(y < lower)),
        "above_upper": float(np.mean(y > upper)),
        "interval_mean_width_ppm": float(np.mean(upper - lower)),
        "rmse_ppm": data.rmse(point, y),
        "rmse_ppm_persistence": data.rmse(x[:, -1, 0], y),
    }
    return Evaluation(
        "mae_ppm", score, "persistence (next week = this week)", base,
        f"each of the {len(y)} held-out weeks (last 20%, 1993-04-03 onward) as a target, the "
        f"model reading the {x.shape[1]} weeks before it (the first windows reach into training "
        "weeks)",
        f"mae <= {INTERVAL_MAX_RATIO} x persistence and 80% interval coverage in "
        f"[{low}, {high}]",
        score <= INTERVAL_MAX_RATIO * base and low <= coverage <= high, extra,
    )  # fmt: skip


def word_language_text(model: keras.Model, ids_model: keras.Model) -> Evaluation:
    """The held-out words sent as text (in batches of words of one length: nothing padded, as
    if each were alone): the same accuracy as word_language, the same answer on every word."""
    s = data.word_language_split()
    ids = data.padded_char_ids(s.test, s.alphabet)
    by_ids = np.concatenate(
        [_predict(ids_model, ids[i : i + 2048]) for i in range(0, len(ids), 2048)]
    )
    by_text = np.zeros_like(by_ids)
    lengths = np.array([len(w) for w in s.test])
    for n in np.unique(lengths):
        rows = np.flatnonzero(lengths == n)
        for i in range(0, len(rows), 2048):
            chunk = rows[i : i + 2048]
            texts = np.array([s.test[j] for j in chunk], dtype=object)
            by_text[chunk] = keras.ops.convert_to_numpy(model(texts, training=False))
    acc = float(np.mean(by_text.argmax(1) == s.y_test))
    agree = float(np.mean(by_text.argmax(1) == by_ids.argmax(1)))
    diff = float(np.max(np.abs(by_text - by_ids)))
    return Evaluation(
        "accuracy", acc, "word_language on the same words as character ids",
        float(np.mean(by_ids.argmax(1) == s.y_test)),
        f"word_language's held-out words ({len(s.test)}), sent as text",
        "the same label as word_language on every held-out word", agree == 1.0,
        {"agreement_with_word_language": agree, "max_probability_difference": diff},
    )  # fmt: skip


def word_language(model: keras.Model) -> Evaluation:
    """Accuracy on the held-out 20% of words against a character n-gram naive Bayes fitted on
    the same training words and scored on the same held-out words (the gate: beat it)."""
    s = data.word_language_split()
    x = data.padded_char_ids(s.test, s.alphabet)
    probs = np.concatenate([_predict(model, x[i : i + 2048]) for i in range(0, len(x), 2048)])
    acc = float(np.mean(probs.argmax(-1) == s.y_test))
    majority = float(np.mean(s.y_test == np.bincount(s.y_train).argmax()))
    bayes = float(np.mean(data.word_language_naive_bayes() == s.y_test))
    return Evaluation(
        "accuracy", acc, WORD_LANGUAGE_BASELINE, bayes,
        f"stratified 80/20 train/held-out split of {len(s.train) + len(s.test)} words "
        f"(seed {data.SEED}); the baseline is fitted and scored on the same split",
        f"accuracy > {WORD_LANGUAGE_BASELINE} (same held-out words)", acc > bayes,
        {"accuracy_majority_class": majority},
    )  # fmt: skip
