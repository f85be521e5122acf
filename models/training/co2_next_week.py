"""co2_next_week (many_to_many_aligned): at every week, next week's CO2 level (ppm)."""

from __future__ import annotations

import keras
import numpy as np

from models.training import data, evaluate
from models.training.common import Artifact, seed_everything

NAME = "co2_next_week"
WINDOW = 104  # training window length in weeks (the model itself accepts any length)
STRIDE = 2
DELTA_SCALE = 0.5  # ppm: typical size of a weekly change, to bring deltas near unit scale
CLIP = 5.0  # clip scaled deltas to +-CLIP; only the first step (zero padding) ever reaches it


def _difference(inputs: keras.KerasTensor) -> keras.KerasTensor:
    """x_t - x_{t-1} with a frozen causal Conv1D (first step sees x_0 - 0, which gets clipped)."""
    conv = keras.layers.Conv1D(
        1, 2, padding="causal", use_bias=False, trainable=False, name="weekly_change"
    )
    out = conv(inputs)
    conv.set_weights([np.array([-1.0, 1.0], dtype="float32").reshape(2, 1, 1)])
    return out


def _scale_and_clip(delta: keras.KerasTensor) -> keras.KerasTensor:
    """(delta / DELTA_SCALE) clipped to [-CLIP, CLIP], then mapped to [-1, 1] (built-ins only)."""
    h = keras.layers.Rescaling(1.0 / DELTA_SCALE, offset=CLIP, name="scale_shift")(delta)
    h = keras.layers.ReLU(max_value=2 * CLIP, name="clip")(h)
    return keras.layers.Rescaling(1.0 / CLIP, offset=-1.0, name="to_unit")(h)


def build(units: int = 32) -> keras.Model:
    """Predict the next weekly change from the history of changes and add it to x_t.

    Every layer is causal and per-step (Conv1D receptive field 2, LSTM, per-step Dense), so the
    model can be run one week at a time with recurrent state.
    """
    inputs = keras.Input(shape=(None, 1), name="co2_ppm")
    h = _scale_and_clip(_difference(inputs))
    h = keras.layers.LSTM(units, return_sequences=True, name="change_memory")(h)
    h = keras.layers.Dense(1, name="next_change_scaled")(h)
    delta = keras.layers.Rescaling(DELTA_SCALE, name="next_change_ppm")(h)
    outputs = keras.layers.Add(name="next_week_ppm")([inputs, delta])
    return keras.Model(inputs, outputs, name=NAME)


def windows(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Training windows (m, WINDOW, 1) of inputs and next-week targets with targets in [lo, hi)."""
    ppm = data.co2_series().ppm
    starts = np.arange(lo, hi - WINDOW, STRIDE)
    x = np.stack([ppm[s : s + WINDOW] for s in starts])
    y = np.stack([ppm[s + 1 : s + WINDOW + 1] for s in starts])
    return x[..., None], y[..., None]


def fit(model: keras.Model, lo: int, hi: int, epochs: int, **kw) -> keras.callbacks.History:
    """Fit on windows inside [lo, hi); step 0 of each window (padding artefact) is unscored."""
    x, y = windows(lo, hi)
    weight = np.ones(y.shape[:2], dtype="float32")
    weight[:, 0] = 0.0
    model.compile(keras.optimizers.Adam(3e-3), "mse")
    return model.fit(x, y, sample_weight=weight, epochs=epochs, batch_size=32, verbose=0, **kw)


def train() -> Artifact:
    """Train on weeks before the held-out last 20%; score on the held-out part."""
    seed_everything(data.SEED)
    model = build()
    fit(model, 0, data.co2_series().split, epochs=EPOCHS)
    return Artifact(
        name=NAME,
        model=model,
        mode="many_to_many_aligned",
        description="Mauna Loa CO2: at every week, the predicted level of the following week.",
        input_description="[batch, weeks, 1] weekly mean atmospheric CO2 in ppm (Mauna Loa), "
        "consecutive weeks, any length",
        output_description="[batch, weeks, 1]: output step t = predicted CO2 (ppm) for week t+1",
        max_batch_size=32,
        evaluation=evaluate.co2_next_week(model),
        card_body=CARD,
    )


EPOCHS = 20

CARD = """
## Data

`statsmodels.datasets.co2`: weekly mean CO2 (ppm) at Mauna Loa, 1958-03-29 to 2001-12-29,
2284 weeks; 59 missing weeks (all before 1984) linearly interpolated in time. The last 20% of
weeks (457 weeks, 1993-04-03 onward) are held out; it has no interpolated weeks. Training uses
104-week windows (stride 2) whose targets all precede the held-out part.

## Model (all built-in layers, preprocessing inside)

1. `Conv1D(1, kernel_size=2, padding="causal")`, frozen weights [-1, 1]: weekly change
   x_t - x_{t-1}. The first step of any sequence sees zero padding (x_0 - 0 ~ 315 ppm).
2. `Rescaling(1/0.5 ppm, offset=5)` -> `ReLU(max_value=10)` -> `Rescaling(1/5, offset=-1)`:
   scale the change and clip it to +-2.5 ppm, which tames the padding artefact on step 0 (the
   loss ignores step 0 during training; treat the first output of a stream as unreliable).
3. `LSTM(32, return_sequences=True)` -> `Dense(1)` -> `Rescaling(0.5)`: next weekly change (ppm).
4. `Add` with the input x_t: the next week's level.

Every layer is causal and per-step, so the model runs on any length and step by step; the
Conv1D needs the previous input week (receptive field 2), the LSTM carries state.

## Caveats

The epoch count (20) was picked on a validation slice (the last 156 training weeks) before the
held-out part was scored. Levels outside the training range (1958-1993) are fine because the
network only sees weekly changes; a regime change in the seasonal cycle would not be. The
score uses 104 training weeks as warm-up context before the held-out part: feed at least a
year of history before trusting predictions, the LSTM needs it to lock onto the seasonal phase.
"""
