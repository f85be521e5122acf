"""`python -m bench.text_cost [--rounds N]`: what serving raw text costs (issue 24).

Two models of one architecture side by side on one server (127.0.0.1): `words_text` takes whole
texts (`TextVectorization` inside: the server computes each text alone, see runtime.py) and
`words_ids` takes the same texts' token ids (`Embedding(mask_zero)` -> LSTM(32) -> softmax, the
same weights). One caller, Predict through the SDK, batches of 1 and 8 items, in alternating
blocks so that both see the same machine. Writes bench/results/text_cost.md and prints the table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from bench import servers
from seqserve_client import SeqServeClient
from tests.support.text_zoo import WORDS, texts

RESULTS = Path(__file__).resolve().parent / "results"
BLOCK = 30  # calls per block
BATCHES = (1, 8)


def build(root: Path) -> None:
    """The two models: one architecture, one set of weights, text or ids in front."""
    keras.utils.set_random_seed(7)
    vectorize = keras.layers.TextVectorization(max_tokens=64, vocabulary=WORDS)
    ids = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(64, 16, mask_zero=True)(ids)
    x = keras.layers.LSTM(32)(x)
    body = keras.Model(ids, keras.layers.Dense(3, activation="softmax")(x))
    text = keras.Input((), dtype="string")
    for name, model in (
        ("words_ids", body),
        ("words_text", keras.Model(text, body(vectorize(text)))),
    ):
        (root / name / "1").mkdir(parents=True)
        model.save(root / name / "1" / "model.keras")


def token_ids(items: list[str]) -> list[np.ndarray]:
    """What the text model's TextVectorization makes of each text (the ids model's input)."""
    vectorize = keras.layers.TextVectorization(max_tokens=64, vocabulary=WORDS)
    return [np.asarray(vectorize([t]))[0].astype(np.int32) for t in items]


def measure(client: SeqServeClient, rounds: int) -> dict[tuple[str, int], list[float]]:
    rng = np.random.default_rng(3)
    items = texts(rng, max(BATCHES))
    ids = token_ids(items)
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):
        for batch in BATCHES:
            for name, x in (("words_text", items[:batch]), ("words_ids", ids[:batch])):
                for _ in range(BLOCK):
                    start = time.perf_counter()
                    client.predict(name, x)
                    times.setdefault((name, batch), []).append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root)
        server = servers.serve(root, [])
        try:
            with SeqServeClient(server.target, timeout=60) as client:
                times = measure(client, args.rounds)
        finally:
            server.stop()
    lines = [
        f"`python -m bench.text_cost --rounds {args.rounds}` ({time.strftime('%Y-%m-%d %H:%M')}, "
        f"one caller, Predict round trips, {args.rounds} alternating blocks of {BLOCK})",
        "",
        "| batch | text in: p50 / mean | token ids in: p50 / mean | text / ids (p50) |",
        "|---:|---:|---:|---:|",
    ]
    for batch in BATCHES:
        text, ids = times[("words_text", batch)], times[("words_ids", batch)]
        lines.append(
            f"| {batch} | {_ms(text)} | {_ms(ids)} "
            f"| {statistics.median(text) / statistics.median(ids):.2f}x |"
        )
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "text_cost.md").write_text(table + "\n")


def _ms(seconds: list[float]) -> str:
    return f"{1000 * statistics.median(seconds):.2f} / {1000 * statistics.fmean(seconds):.2f} ms"


if __name__ == "__main__":
    main()
