"""co2_interval (many_to_one, two outputs): next week's CO2 level and an 80% interval around it.

The served model reads any number of weeks and answers for the week after the last one, with
two named vector outputs: `forecast` [1] (point forecast, ppm) and `interval` [2] (lower, upper
bound of an 80% prediction interval, ppm; the 0.1 and 0.9 quantiles). It is trained through a
per-step twin with the same layers (every week of a training window is a target, as for
co2_next_week), whose weights are then copied into the many-to-one model that ships.
"""

from __future__ import annotations

import keras
import numpy as np

from models.training import data, evaluate
from models.training.co2_next_week import DELTA_SCALE, _difference, _scale_and_clip, windows
from models.training.common import Artifact, seed_everything

NAME = "co2_interval"
UNITS = 32
EPOCHS = 20
QUANTILES = (0.1, 0.9)  # the interval's bounds: an 80% central prediction interval
WARMUP_WEEKS = 4  # per-step training: the first weeks of a window are not scored


def _last_week(inputs: keras.KerasTensor) -> keras.KerasTensor:
    """x_t, the last input week, as (batch, 1): a frozen linear SimpleRNN whose state is its
    input (kernel 1, recurrent kernel 0, no bias). It reads any length and steps in sessions,
    where slicing the last step (Cropping1D) needs a fixed length."""
    rnn = keras.layers.SimpleRNN(
        1, activation="linear", use_bias=False, trainable=False, name="last_week_ppm"
    )
    out = rnn(inputs)
    rnn.set_weights([np.ones((1, 1), "float32"), np.zeros((1, 1), "float32")])
    return out


def build(per_step: bool = False) -> keras.Model:
    """Weekly changes (co2_next_week's frozen differencing and clipping) -> LSTM -> two heads.

    `per_step=False` is the served many-to-one model; `per_step=True` its training twin, which
    answers at every week (same layer names and weights, LSTM with return_sequences, and x_t
    is the input itself instead of the last-week SimpleRNN).
    """
    inputs = keras.Input(shape=(None, 1), name="co2_ppm")
    h = _scale_and_clip(_difference(inputs))
    h = keras.layers.LSTM(UNITS, return_sequences=per_step, name="change_memory")(h)
    last = inputs if per_step else _last_week(inputs)

    def to_ppm(scaled: keras.KerasTensor, name: str) -> keras.KerasTensor:
        return keras.layers.Rescaling(DELTA_SCALE, name=name)(scaled)

    change = to_ppm(keras.layers.Dense(1, name="next_change_scaled")(h), "next_change_ppm")
    forecast = keras.layers.Add(name="forecast")([last, change])
    # Lower bound, and a width >= 0 above it (softplus), so the bounds never cross.
    lower = to_ppm(keras.layers.Dense(1, name="lower_change_scaled")(h), "lower_change_ppm")
    width = keras.layers.Dense(1, activation="softplus", name="width_scaled")(h)
    upper = keras.layers.Add(name="upper_change_ppm")([lower, to_ppm(width, "width_ppm")])
    bounds = keras.layers.Concatenate(name="interval_change_ppm")([lower, upper])
    level = keras.layers.Concatenate(name="last_week_twice")([last, last])
    interval = keras.layers.Add(name="interval")([level, bounds])
    return keras.Model(inputs, {"forecast": forecast, "interval": interval}, name=NAME)


def loss(y_true: keras.KerasTensor, y_pred: keras.KerasTensor) -> keras.KerasTensor:
    """Per step: squared error of the point forecast plus the pinball (quantile) losses of the
    two bounds. y_pred is [forecast, lower, upper] in ppm, y_true the next week's level."""
    err = y_true - y_pred  # (batch, steps, 3)
    q = keras.ops.convert_to_tensor(np.array([0.0, *QUANTILES], dtype="float32"))
    pinball = keras.ops.maximum(q * err, (q - 1.0) * err)
    terms = keras.ops.concatenate([keras.ops.square(err[..., :1]), pinball[..., 1:]], axis=-1)
    return keras.ops.sum(terms, axis=-1)


def fit(per_step: keras.Model, lo: int, hi: int, epochs: int) -> None:
    """Fit the twin on co2_next_week's windows with targets in [lo, hi); warm-up unscored."""
    x, y = windows(lo, hi)
    weight = np.ones(y.shape[:2], dtype="float32")
    weight[:, :WARMUP_WEEKS] = 0.0
    heads = [per_step.output["forecast"], per_step.output["interval"]]  # (b, t, 1), (b, t, 2)
    both = keras.layers.Concatenate(name="both_heads")(heads)  # [forecast, lower, upper], ppm
    trainer = keras.Model(per_step.input, both, name="trainer")
    trainer.compile(keras.optimizers.Adam(3e-3, name="adam"), loss=loss)
    trainer.fit(x, y, sample_weight=weight, epochs=epochs, batch_size=32, verbose=0)


def served_from(per_step: keras.Model) -> keras.Model:
    """The many-to-one model, with the trained twin's weights layer by layer (by name)."""
    model = build(per_step=False)
    for layer in model.layers:
        if layer.weights and layer.name != "last_week_ppm":
            layer.set_weights(per_step.get_layer(layer.name).get_weights())
    return model


def train() -> Artifact:
    """Train on weeks before the held-out last 20%; score on the held-out part."""
    seed_everything(data.SEED)
    twin = build(per_step=True)
    fit(twin, 0, data.co2_series().split, epochs=EPOCHS)
    model = served_from(twin)
    return Artifact(
        name=NAME,
        model=model,
        mode="many_to_one",
        description="Mauna Loa CO2: after any number of weeks, the next week's level (forecast) "
        "and an 80% prediction interval for it (interval).",
        input_description="[batch, weeks, 1] weekly mean atmospheric CO2 in ppm (Mauna Loa), "
        "consecutive weeks, any length (a year or more for good forecasts)",
        output_description="two named outputs, float32: `forecast` [batch, 1] = predicted CO2 "
        "(ppm) for the week after the last input week; `interval` [batch, 2] = (lower, upper) "
        "bound of an 80% prediction interval for that week (0.1 and 0.9 quantiles, ppm)",
        max_batch_size=32,
        evaluation=evaluate.co2_interval(model),
        card_body=CARD,
    )


CARD = f"""
## Data

`statsmodels.datasets.co2`: weekly mean CO2 (ppm) at Mauna Loa, 1958-03-29 to 2001-12-29,
2284 weeks; 59 missing weeks (all before 1984) linearly interpolated in time. The last 20% of
weeks (1993-04-03 onward) are held out and contain no interpolated weeks. Training uses
co2_next_week's 104-week windows (stride 2) whose targets all precede the held-out part.

Scored on every held-out week as a target: the model reads the {data.CO2_INTERVAL_CONTEXT} weeks
before it (reaching back into training weeks for the first ones). Baseline for the point
forecast: persistence (next week = this week). The interval is judged by its empirical
coverage (share of held-out weeks inside it; nominal 0.8) and its mean width.

## Model (all built-in layers, preprocessing inside)

1. co2_next_week's front end: frozen causal `Conv1D` [-1, 1] (weekly change), scaled by
   1/{DELTA_SCALE} ppm and clipped with `Rescaling` / `ReLU(max_value)` / `Rescaling`.
2. `LSTM({UNITS})` over the changes (the last step's state).
3. Heads, each a change from the last input week x_t in units of {DELTA_SCALE} ppm, added to
   x_t (read by a frozen identity `SimpleRNN(1)`: kernel 1, recurrent kernel 0, no bias):
   - `forecast`: `Dense(1)`;
   - `interval`: lower = `Dense(1)`, upper = lower + `Dense(1, softplus)` (never below the lower
     bound), concatenated as [lower, upper].

Loss, summed per week: squared error of `forecast` plus the pinball (quantile) loss of the lower
bound at q = {QUANTILES[0]} and of the upper bound at q = {QUANTILES[1]}. Training runs a per-step
twin of this model (the same layers with `return_sequences=True`; every week of a window after
the first {WARMUP_WEEKS} is a target), Adam 3e-3, {EPOCHS} epochs, batch 32; the served
many-to-one model gets its weights layer by layer. So the answer after any prefix of weeks is
the one the twin was trained to give at that week: a session's running prediction at each step
is a trained forecast.

## Caveats

The interval comes from quantile regression on 1958-1993 weeks (the 59 interpolated weeks
among them are smoother than real ones); its coverage is measured on 1993-2001 only (table
above) and may differ from the nominal 80% in other periods. It is a per-week marginal
interval, not a band for several weeks ahead, and it was not tuned: the settings are
co2_next_week's (units, epochs, windows), tried once. The first weeks of a
sequence carry the differencing artefact of co2_next_week (the change at step 0 is clipped):
send a year or more of history before trusting the output.
"""
