"""The bundled models (models/): where they are, which step in sessions, plausible inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

MODELS = Path(__file__).resolve().parents[2] / "models"
TOLERANCE = 1e-4  # raw ppm (~350) in float32: 1e-5 relative to the values served
NAMES = sorted(p.parent.parent.name for p in MODELS.glob("*/1/model.keras"))
SESSION_MODELS = [  # the bundled models that support sessions
    "co2_next_week",
    "digit_classifier",
    "word_language",
    "co2_forecast_13w",
    "co2_forecast_13w_cropped",
    "co2_interval",
]


def example_input(name: str, rng: np.random.Generator) -> np.ndarray:
    """Plausible raw inputs of each model's signature."""
    if name == "iris_classifier":
        return rng.uniform([4, 2, 1, 0.1], [8, 4.5, 7, 2.5], size=(5, 4)).astype(np.float32)
    if name == "digit_generator":
        return np.eye(10, dtype=np.float32)[[0, 3, 7]]
    if name == "digit_classifier":
        return rng.integers(0, 17, size=(4, 8, 8)).astype(np.float32)
    if name == "word_language_text":  # words as text, capitals and unknown characters too
        return np.array(["bonjour", "Straße", "kiitos", "NAÏVE", "über"], dtype=object)
    if name == "word_language":  # character ids; 0 is padding, masked by the Embedding
        ids = rng.integers(1, 60, size=(4, 9), dtype=np.int32)
        ids[1, 5:] = ids[2, 3:] = 0
        return ids
    weeks = {"co2_next_week": 80, "co2_interval": 80}.get(name, 52)
    trend = 340 + 0.03 * np.arange(weeks) + 3 * np.sin(np.arange(weeks) * 2 * np.pi / 52)
    return (trend + rng.normal(0, 0.3, size=(3, weeks)))[..., None].astype(np.float32)
