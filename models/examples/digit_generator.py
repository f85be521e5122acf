"""Generate one 8x8 digit per class, draw it in the terminal, and let digit_classifier read it.

python -m models.examples.digit_generator --target 127.0.0.1:8500
"""

from __future__ import annotations

import numpy as np

from models.examples._shared import draw_digit, format_top_k, parse_args
from models.training import data
from seqserve_client import SeqServeClient

MODEL = "digit_generator"


def main() -> None:
    args = parse_args(__doc__)
    requested = np.arange(10)
    with SeqServeClient(args.target) as c:
        images = c.predict(MODEL, data.one_hot(requested))  # [10, 8 rows, 8 pixels], 0..16
        ranked = c.classify("digit_classifier", images, top_k=3)
    for digit, image, top in zip(requested, images, ranked, strict=True):
        print(f"requested {digit} -> digit_classifier top-3: {format_top_k(top)}")
        print(draw_digit(image), end="\n\n")


if __name__ == "__main__":
    main()
