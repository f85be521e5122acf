"""Forecast 13 weeks of CO2 from the last 52 held-out weeks and plot it beside the truth (PNG).

    python -m models.examples.co2_forecast_13w --target 127.0.0.1:8500 [--model NAME] [--out F]

`--model co2_forecast_13w_cropped` runs the same example against the cropped variant.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from models.examples._shared import plot_forecast
from models.training import data
from seqserve_client import SeqServeClient

MODEL = "co2_forecast_13w"


def run(model: str, target: str, out: Path | None) -> Path:
    """Forecast from the last held-out origin with 13 known future weeks; print and plot."""
    origin = int(data.forecast_test_origins()[-1])
    x, y = data.forecast_windows(np.array([origin]))  # [1, 52, 1] and [1, 13, 1] ppm
    with SeqServeClient(target) as c:
        forecast = np.asarray(c.predict(model, x))[0, :, 0]
    baseline = data.forecast_baselines(np.array([origin]))["seasonal naive with drift"][0, :, 0]
    truth = y[0, :, 0]
    print(f"{model}: forecast from week ending {data.co2_series().dates[origin]}")
    print("week  truth   forecast  seasonal-naive+drift")
    for h, (t, f, b) in enumerate(zip(truth, forecast, baseline, strict=True), start=1):
        print(f"+{h:<3d} {t:7.2f} {f:9.2f} {b:9.2f}")
    print(f"RMSE model {data.rmse(forecast, truth):.3f}, baseline {data.rmse(baseline, truth):.3f}")
    print(f"(one origin only; the held-out average over all origins is in {model}/MODEL_CARD.md)")
    dates = data.co2_series().dates
    past, future = dates[origin - 51 : origin + 1], dates[origin + 1 : origin + 14]
    return plot_forecast(
        out or Path(f"{model}.png"),
        f"{model}: 13-week forecast from the last 52 weeks (held-out period)",
        history=(past, x[0, :, 0]),
        truth=(future, truth),
        forecasts={model: (future, forecast), "seasonal naive + drift": (future, baseline)},
    )


def main(default_model: str = MODEL) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="127.0.0.1:8500", help="seqserve host:port")
    parser.add_argument("--model", default=default_model)
    parser.add_argument("--out", type=Path, default=None, help="PNG path to write")
    args = parser.parse_args()
    print(f"plot written to {run(args.model, args.target, args.out)}")


if __name__ == "__main__":
    main()
