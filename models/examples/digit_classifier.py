"""Classify held-out handwritten digits fed row by row; also from only the first rows.

python -m models.examples.digit_classifier --target 127.0.0.1:8500
"""

from __future__ import annotations

from models.examples._shared import draw_digit, format_top_k, parse_args
from models.training import data
from seqserve_client import SeqServeClient

MODEL = "digit_classifier"


def main() -> None:
    args = parse_args(__doc__)
    split = data.digits_split()
    x, y = split.x_test[:3], split.y_test[:3]  # [batch, 8 rows, 8 pixels], raw 0..16
    with SeqServeClient(args.target) as c:
        full = c.classify(MODEL, x, top_k=3)
        partial = c.classify(MODEL, x[:, :5], top_k=3)  # dynamic time axis: first 5 rows only
    for image, truth, top, early in zip(x, y, full, partial, strict=True):
        print(draw_digit(image))
        print(f"true {truth} | top-3 (8 rows): {format_top_k(top)}")
        print(f"          top-3 (first 5 rows): {format_top_k(early)}\n")


if __name__ == "__main__":
    main()
