"""co2_forecast_13w_cropped (many_to_many_unaligned): one recurrent pass, Cropping1D to 13 steps.

Same task as co2_forecast_13w, the mode's other shape: a single sequence-to-sequence LSTM runs
over the 52 observed weeks and then over 13 appended "future" steps, and Cropping1D keeps only
the outputs of those 13 future steps.
"""

from __future__ import annotations

import keras

from models.training import data
from models.training.co2_forecast_13w import (
    DATA_NOTES,
    EPOCHS,
    add_back_level,
    artifact,
    fit,
    relative_to_last,
)
from models.training.common import Artifact, seed_everything

NAME = "co2_forecast_13w_cropped"


def observed_flag(inputs: keras.KerasTensor) -> keras.KerasTensor:
    """A channel that is 1 on the 52 observed weeks (0 on the future steps once padded).

    `Rescaling(scale=0, offset=1)` turns any input into ones without a Lambda layer.
    """
    return keras.layers.Rescaling(0.0, offset=1.0, name="observed_flag")(inputs)


def build(units: int = 64) -> keras.Model:
    """[relative level, observed flag] + 13 zero steps -> stacked LSTMs -> keep last 13 steps."""
    inputs = keras.Input(shape=(data.CO2_CONTEXT, 1), name="last_52_weeks_ppm")
    rel, last = relative_to_last(inputs)
    h = keras.layers.Concatenate(name="value_and_flag")([rel, observed_flag(inputs)])
    h = keras.layers.ZeroPadding1D((0, data.CO2_HORIZON), name="append_future_steps")(h)
    h = keras.layers.LSTM(units, return_sequences=True, name="lstm_1")(h)
    h = keras.layers.LSTM(units, return_sequences=True, name="lstm_2")(h)
    h = keras.layers.Dense(1, name="offset_scaled")(h)  # one output per step, 65 steps
    h = keras.layers.Cropping1D((data.CO2_CONTEXT, 0), name="keep_future_steps")(h)
    return keras.Model(inputs, add_back_level(h, last), name=NAME)


def train() -> Artifact:
    """Train on windows whose targets precede the held-out last 20%."""
    seed_everything(data.SEED)
    model = build()
    fit(model, 0, data.co2_series().split, EPOCHS)
    return artifact(NAME, model, CARD)


CARD = (
    DATA_NOTES
    + """
## Model (all built-in layers, preprocessing inside)

Design: a single recurrent pass whose *last 13 steps* are the forecast. The 52 observed weeks
are followed by 13 appended future steps, so output step i (of the 13 kept) is produced after
the LSTMs have read every observed week and i+1 future placeholders: it is the forecast for
week t+1+i, with the full 52 weeks of information (unlike cropping the last 13 outputs of the
observed weeks themselves, which would forecast from truncated history).

1. As in co2_forecast_13w: values relative to the last observed week x_t, `Rescaling(1/4)`.
2. `Rescaling(scale=0, offset=1)` on the input makes a ones channel; `Concatenate` -> features
   [relative level, observed=1].
3. `ZeroPadding1D((0, 13))` appends 13 steps of [0, 0]: the flag tells the network they are
   future weeks to fill in.
4. `LSTM(64, return_sequences=True)` x2 -> `Dense(1)` per step (65 steps) ->
   `Cropping1D((52, 0))` keeps the last 13 steps.
5. `Rescaling(4)` and `Add` with x_t: absolute ppm.

## Caveats

Same as co2_forecast_13w: exactly 52 consecutive weeks in, trained on 1958-1993. Unlike the
encoder-decoder, this shape would let a known future covariate (e.g. a calendar signal) ride on
the appended steps; none is used here.
"""
)
