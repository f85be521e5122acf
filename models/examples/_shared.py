"""Helpers shared by the examples: command line, terminal drawing, forecast plots."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SHADES = " .:-=+*#%@"  # light to dark, for 0..16 pixel intensities


def parse_args(description: str, plot: bool = False, words: bool = False) -> argparse.Namespace:
    """--target host:port of a running seqserve (--out for examples that plot, words to send)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--target", default="127.0.0.1:8500", help="seqserve host:port")
    if plot:
        parser.add_argument("--out", type=Path, default=None, help="PNG path to write")
    if words:
        parser.add_argument("words", nargs="*", help="words to classify (default: held-out ones)")
    return parser.parse_args()


def draw_digit(image: np.ndarray, vmax: float = 16.0) -> str:
    """An 8x8 image as ASCII shades, two characters per pixel so it looks square."""
    idx = np.clip(np.asarray(image) / vmax * (len(SHADES) - 1), 0, len(SHADES) - 1)
    return "\n".join("".join(SHADES[round(float(v))] * 2 for v in row) for row in idx)


def format_top_k(ranked: list[tuple[str, float]]) -> str:
    """'3 0.98, 8 0.01, 5 0.00'."""
    return ", ".join(f"{label} {score:.2f}" for label, score in ranked)


def plot_forecast(
    path: Path,
    title: str,
    truth: tuple[np.ndarray, np.ndarray],
    forecasts: dict[str, tuple[np.ndarray, np.ndarray]],
    history: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Save a PNG of history, true future and one or more forecasts ((dates, ppm) pairs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    if history is not None:
        ax.plot(*history, color="0.5", label="input weeks")
    ax.plot(*truth, color="black", marker=".", label="truth")
    for label, series in forecasts.items():
        ax.plot(*series, marker="x", label=label)
    ax.set_title(title)
    ax.set_ylabel("CO2 (ppm)")
    ax.legend()
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
