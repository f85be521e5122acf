"""Forecast 13 weeks of CO2 with the Cropping1D variant and plot it beside the truth (PNG).

python -m models.examples.co2_forecast_13w_cropped --target 127.0.0.1:8500 [--out F]
"""

from __future__ import annotations

from models.examples.co2_forecast_13w import main

if __name__ == "__main__":
    main("co2_forecast_13w_cropped")
