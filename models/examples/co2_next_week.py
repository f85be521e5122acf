"""Stream the held-out CO2 weeks through co2_next_week and plot next-week predictions (PNG).

python -m models.examples.co2_next_week --target 127.0.0.1:8500 [--out co2_next_week.png]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.examples._shared import parse_args, plot_forecast
from models.training import data
from seqserve_client import SeqServeClient

MODEL = "co2_next_week"


def main() -> None:
    args = parse_args(__doc__, plot=True)
    x, y, first = data.next_week_eval_window()  # 104 warm-up weeks, then the held-out weeks
    with SeqServeClient(args.target) as c:
        pred = np.asarray(c.predict(MODEL, x[None, :, None]))[0, :, 0]  # step t -> week t+1
    pred, y, last = pred[first:], y[first:], x[first:]
    print(f"held-out weeks: {len(y)}")
    print(f"RMSE model {data.rmse(pred, y):.3f} ppm, persistence {data.rmse(last, y):.3f} ppm")
    s = data.co2_series()
    dates = s.dates[s.split : s.split + len(y)]
    show = slice(-104, None)  # the last two years keep the plot readable
    out = plot_forecast(
        args.out or Path(f"{MODEL}.png"),
        "co2_next_week: next-week prediction on held-out weeks (last 2 years)",
        truth=(dates[show], y[show]),
        forecasts={
            "model (one week ahead)": (dates[show], pred[show]),
            "persistence": (dates[show], last[show]),
        },
    )
    print(f"plot written to {out}")


if __name__ == "__main__":
    main()
