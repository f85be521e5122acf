"""Next-week CO2 with an 80% interval from co2_interval, a model with two named outputs.

python -m models.examples.co2_interval --target 127.0.0.1:8500 [--out co2_interval.png]

Predict: one 104-week window per held-out week; the answer is a dict by output name,
{"forecast": [batch, 1], "interval": [batch, 2]}. Then a session streams the held-out weeks one
per step and prints the running forecast and interval after each of the last ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.examples._shared import parse_args, plot_forecast
from models.training import data
from seqserve_client import SeqServeClient

MODEL = "co2_interval"
SESSION_WEEKS = 8  # weeks of the session printed (the last ones streamed)


def main() -> None:
    args = parse_args(__doc__, plot=True)
    x, y = data.next_week_windows()  # (weeks, 104, 1) inputs, (weeks,) next-week truth
    with SeqServeClient(args.target) as c:
        out = c.predict(MODEL, x)  # several outputs: a dict of arrays by output name
        assert isinstance(out, dict), "a several-output model answers by output name"
        point, interval = np.asarray(out["forecast"])[:, 0], np.asarray(out["interval"])
        lower, upper, last = interval[:, 0], interval[:, 1], x[:, -1, 0]
        inside = (lower <= y) & (y <= upper)
        print(f"held-out weeks: {len(y)}; outputs: {', '.join(out)}")
        mae, naive = np.mean(np.abs(point - y)), np.mean(np.abs(last - y))
        print(f"MAE model {mae:.3f} ppm, persistence {naive:.3f} ppm")
        print(f"80% interval: coverage {inside.mean():.3f}, width {np.mean(upper - lower):.3f} ppm")

        s = data.co2_series()
        first = s.split - data.CO2_INTERVAL_CONTEXT
        weeks, dates = s.ppm[first:], s.dates[first:]  # two warm-up years, then held-out weeks
        print(f"\nsession: {len(weeks)} weeks, one per step; the last {SESSION_WEEKS} answers:")
        with c.session(MODEL) as session:  # the LSTM state stays on the server between steps
            for n, week in enumerate(weeks[:-1], start=1):
                step = session.step(week[None])  # one step: [features] = [1]
                if n < len(weeks) - SESSION_WEEKS:
                    continue
                assert step is not None  # many-to-one sessions answer every step by default
                (guess,), (lo, hi) = step["forecast"], step["interval"]
                print(
                    f"  after {dates[n - 1]}: next week {guess:.2f} ppm, 80% [{lo:.2f}, {hi:.2f}]"
                    f", truth {weeks[n]:.2f}"
                )

    held_out = s.dates[s.split :]  # the date of each target week
    show = slice(-104, None)  # the last two years keep the plot readable
    path = plot_forecast(
        args.out or Path(f"{MODEL}.png"),
        "co2_interval: next-week forecast and 80% interval on held-out weeks (last 2 years)",
        truth=(held_out[show], y[show]),
        forecasts={
            "forecast": (held_out[show], point[show]),
            "interval lower": (held_out[show], lower[show]),
            "interval upper": (held_out[show], upper[show]),
        },
    )
    print(f"plot written to {path}")


if __name__ == "__main__":
    main()
