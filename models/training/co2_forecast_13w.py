"""co2_forecast_13w (many_to_many_unaligned, encoder-decoder): next 13 weeks from the last 52."""

from __future__ import annotations

import keras

from models.training import data, evaluate
from models.training.common import Artifact, seed_everything

NAME = "co2_forecast_13w"
LEVEL_SCALE = 4.0  # ppm: spread of values relative to the last week within a 52+13 week span
EPOCHS = 30


def relative_to_last(inputs: keras.KerasTensor) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """(scaled x - x_last for every input week, x_last as (batch, 1)), built-in layers only.

    Working relative to the last observed week makes the network level-free: the held-out
    years have higher CO2 than any training week, but the same shape relative to "now".
    """
    steps = data.CO2_CONTEXT
    last = keras.layers.Cropping1D((steps - 1, 0), name="last_week")(inputs)  # (b, 1, 1)
    last = keras.layers.Flatten(name="last_week_ppm")(last)  # (b, 1)
    rel = keras.layers.Subtract(name="relative_ppm")(
        [inputs, keras.layers.RepeatVector(steps, name="last_over_input")(last)]
    )
    return keras.layers.Rescaling(1.0 / LEVEL_SCALE, name="relative_scaled")(rel), last


def add_back_level(h: keras.KerasTensor, last: keras.KerasTensor) -> keras.KerasTensor:
    """Per-step scaled offsets (b, 13, 1) -> absolute ppm by adding the last observed week."""
    offsets = keras.layers.Rescaling(LEVEL_SCALE, name="offset_ppm")(h)
    level = keras.layers.RepeatVector(data.CO2_HORIZON, name="last_over_horizon")(last)
    return keras.layers.Add(name="forecast_ppm")([offsets, level])


def build(units: int = 64) -> keras.Model:
    """LSTM encoder -> RepeatVector(13) -> LSTM decoder -> per-step Dense."""
    inputs = keras.Input(shape=(data.CO2_CONTEXT, 1), name="last_52_weeks_ppm")
    rel, last = relative_to_last(inputs)
    code = keras.layers.LSTM(units, name="encoder")(rel)
    h = keras.layers.RepeatVector(data.CO2_HORIZON, name="code_per_future_week")(code)
    h = keras.layers.LSTM(units, return_sequences=True, name="decoder")(h)
    h = keras.layers.Dense(1, name="offset_scaled")(h)
    return keras.Model(inputs, add_back_level(h, last), name=NAME)


def fit(model: keras.Model, lo: int, hi: int, epochs: int) -> keras.callbacks.History:
    """Fit on every 52->13 window inside weeks [lo, hi)."""
    x, y = data.forecast_windows(data.forecast_origins(lo, hi))
    model.compile(keras.optimizers.Adam(2e-3), "mse")
    return model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)


def artifact(name: str, model: keras.Model, card: str) -> Artifact:
    """Config and card fields shared by both 13-week forecasters."""
    return Artifact(
        name=name,
        model=model,
        mode="many_to_many_unaligned",
        description="Mauna Loa CO2: forecast of the next 13 weeks from the last 52 weeks.",
        input_description="[batch, 52, 1] weekly mean atmospheric CO2 in ppm (Mauna Loa), the "
        "last 52 consecutive weeks, oldest first",
        output_description="[batch, 13, 1]: step i = forecast CO2 (ppm) for week i+1 after the "
        "last input week",
        max_sequence_length=data.CO2_CONTEXT,
        evaluation=evaluate.co2_forecast(model),
        card_body=card,
    )


def train() -> Artifact:
    """Train on windows whose targets precede the held-out last 20%."""
    seed_everything(data.SEED)
    model = build()
    fit(model, 0, data.co2_series().split, EPOCHS)
    return artifact(NAME, model, CARD)


DATA_NOTES = """
## Data

`statsmodels.datasets.co2`: weekly mean CO2 (ppm) at Mauna Loa, 1958-03-29 to 2001-12-29,
2284 weeks; 59 missing weeks (all before 1984) linearly interpolated in time. The last 20% of
weeks (1993-04-03 onward) are held out and contain no interpolated weeks. Training uses every
52-week input / 13-week target window whose targets precede the held-out part.

Baselines, computed from the series' own past for each origin t and horizon h = 1..13:
persistence x_t; seasonal naive x_{t+h-52}; seasonal naive with drift
x_{t+h-52} + (x_t - x_{t-52}) (last year's shape lifted by last year's growth; it uses one week
more history than the model gets). The best of the three is the reference.
"""

CARD = (
    DATA_NOTES
    + """
## Model (all built-in layers, preprocessing inside)

1. `Cropping1D((51, 0))` + `Flatten` take the last observed week x_t; `RepeatVector(52)` and
   `Subtract` express every input week relative to it; `Rescaling(1/4)`.
2. Encoder `LSTM(64)` -> `RepeatVector(13)` -> decoder `LSTM(64, return_sequences=True)` ->
   `Dense(1)` per step: scaled offsets from x_t for the 13 future weeks.
3. `Rescaling(4)` and `Add` with x_t (repeated 13 times): absolute ppm.

## Caveats

Trained on 1958-1993; the held-out score shows it transfers to 1993-2001, but a change in the
growth rate or seasonal amplitude beyond what the last 52 weeks reveal would not be anticipated.
Input must be exactly 52 consecutive weeks without gaps (interpolate missing weeks first).
"""
)
