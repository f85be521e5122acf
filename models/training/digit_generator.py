"""digit_generator (one_to_many): an 8x8 digit image, row by row, from a one-hot class."""

from __future__ import annotations

import keras

from models.training import data, evaluate
from models.training.common import Artifact, seed_everything

NAME = "digit_generator"


def build() -> keras.Model:
    """One-hot -> dense code -> repeated over 8 steps -> LSTM -> 8 pixels per step (0..16)."""
    inputs = keras.Input(shape=(10,), name="class_one_hot")
    h = keras.layers.Dense(32, activation="relu", name="class_code")(inputs)
    h = keras.layers.RepeatVector(8, name="one_step_per_row")(h)
    h = keras.layers.LSTM(64, return_sequences=True, name="row_writer")(h)
    h = keras.layers.Dense(8, activation="sigmoid", name="row_pixels")(h)
    outputs = keras.layers.Rescaling(data.DIGIT_MAX, name="to_pixel_scale")(h)
    return keras.Model(inputs, outputs, name=NAME)


def train(classifier: keras.Model) -> Artifact:
    """Regress the training images of each class (MSE): the generator learns a class prototype."""
    seed_everything(data.SEED)
    split = data.digits_split()
    model = build()
    model.compile(keras.optimizers.Adam(3e-3), "mse")
    x = data.one_hot(split.y_train)
    model.fit(x, split.x_train, epochs=60, batch_size=32, verbose=0)
    return Artifact(
        name=NAME,
        model=model,
        mode="one_to_many",
        description="Generates an 8x8 digit image (8 rows of 8 pixels) for a requested digit.",
        input_description="[batch, 10] float one-hot of the requested digit 0-9 (index = digit)",
        output_description="[batch, 8, 8]: image rows top to bottom, pixel intensities 0..16 "
        "(sklearn digits scale, 16 = full ink)",
        evaluation=evaluate.digit_generator(model, classifier),
        card_body=CARD,
    )


CARD = """
## Data

The training split of scikit-learn's digits (the same 75% the digit_classifier trained on,
stratified, `random_state=1234`); the held-out 25% is used only for the extra checks below.

## Model

`Dense(32, relu)` on the one-hot -> `RepeatVector(8)` -> `LSTM(64, return_sequences=True)` ->
`Dense(8, sigmoid)` per step -> `Rescaling(16)`. Trained with mean squared error against real
images of the requested class, so it draws a smooth *prototype* of that class (close to the
class mean), not a random sample: there is no noise input, the output is deterministic.

## How the score is computed (and what it does not show)

Because each class has exactly one output, the gate is computed on all 10 outputs: each one
must be classified as the requested digit by the shipped `digit_classifier` (0.95 therefore
means 10/10). That only shows the images are recognisable, so the card also reports, against
the held-out images neither model saw:

- `rmse_to_held_out_class_mean`: pixel RMSE (0..16 scale) between each generated image and the
  mean held-out image of its class; next to it the same RMSE for the *training* class means,
  the best a deterministic prototype can reasonably do.
- `nearest_held_out_class_mean_accuracy`: fraction of generated images whose nearest held-out
  class mean is the requested class.

## Caveats

No diversity: one image per class. Inputs that are not one-hot (e.g. a 50/50 mix of two
classes) give blends that were never trained or evaluated.
"""
