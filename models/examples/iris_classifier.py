"""Classify held-out iris flowers by their raw measurements (cm) and show the top-3 species.

python -m models.examples.iris_classifier --target 127.0.0.1:8500
"""

from __future__ import annotations

from models.examples._shared import format_top_k, parse_args
from models.training import data
from seqserve_client import SeqServeClient

MODEL = "iris_classifier"


def main() -> None:
    args = parse_args(__doc__)
    split = data.iris_split()
    x, y = split.x_test[:6], split.y_test[:6]  # [batch, 4] sepal/petal length/width in cm
    with SeqServeClient(args.target) as c:
        ranked = c.classify(MODEL, x, top_k=3)
    for row, truth, top in zip(x, y, ranked, strict=True):
        print(f"{row} true={data.IRIS_LABELS[truth]:10s} top-3: {format_top_k(top)}")


if __name__ == "__main__":
    main()
