"""Shared training plumbing: seeding, and writing model, config.yaml and MODEL_CARD.md.

config.yaml gets only what the server reads; the evaluation, the input/output meaning and any
client-side data (`card_data`) go into the card's front matter (models/cards.py)."""

from __future__ import annotations

import json
import re
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import tensorflow as tf
import yaml

from models.cards import CARD, card_text
from models.training.evaluate import Evaluation

MODELS_DIR = Path(__file__).resolve().parents[1]
MAX_MODEL_BYTES = 2 * 1024 * 1024


def seed_everything(seed: int) -> None:
    """Seed python/numpy/tf and force deterministic kernels so `make models` is reproducible."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


@dataclass
class Artifact:
    """A trained model plus everything written beside it."""

    name: str
    model: keras.Model
    mode: str
    description: str
    input_description: str
    output_description: str
    evaluation: Evaluation
    card_body: str  # model-specific markdown: data, design, caveats
    labels: list[str] | None = None
    max_batch_size: int = 64
    max_sequence_length: int = 0
    seconds: float = 0.0
    card_data: dict[str, object] = field(default_factory=dict)  # more card front matter


def timed(train: Callable[[], Artifact]) -> Artifact:
    """Run a training function and record its wall time on the artifact."""
    start = time.perf_counter()
    artifact = train()
    artifact.seconds = time.perf_counter() - start
    return artifact


def config_dict(a: Artifact) -> dict[str, object]:
    """The config.yaml contents (what the server reads), in the documented key order."""
    cfg: dict[str, object] = {"description": a.description, "mode": a.mode}
    if a.labels is not None:
        cfg["labels"] = a.labels
    return cfg | {"max_batch_size": a.max_batch_size, "max_sequence_length": a.max_sequence_length}


def card_metadata(a: Artifact) -> dict[str, object]:
    """The card's front matter: what tests and clients read besides the server's config."""
    return {
        "input_description": a.input_description,
        "output_description": a.output_description,
        "evaluation": a.evaluation.as_metadata(),
    } | a.card_data


def model_card(a: Artifact, size_bytes: int) -> str:
    """MODEL_CARD.md: front matter, the measured evaluation, then the model-specific notes."""
    ev = a.evaluation
    extras = "".join(f"| {k} | {v:.4f} |\n" for k, v in ev.extra.items())
    labels = f"\n**Labels** (output index -> label): {', '.join(a.labels)}\n" if a.labels else ""
    body = f"""# {a.name}

{a.description}

- **Mode:** `{a.mode}`
- **Input:** {a.input_description}
- **Output:** {a.output_description}
- **File:** `1/model.keras`, {size_bytes / 1024:.0f} KiB; loads with
  `keras.saving.load_model(path, safe_mode=True)` (built-in layers only, no custom code).
{labels}
## Evaluation (held-out, measured by `make models`, checked by tests/models/test_model_quality.py)

- **Split:** {ev.split}
- **Gate:** {ev.gate} -> {"PASS" if ev.passed else "FAIL"}

| metric | value |
|---|---|
| {ev.metric} (model) | {ev.score:.4f} |
| {ev.metric} ({ev.baseline_name}) | {ev.baseline:.4f} |
{extras}
{a.card_body.strip()}

## Reproduce

`make models` (runs `python -m models.training.train_all`; seeded, deterministic on CPU: a
retrain reproduces `1/model.keras` byte for byte).
"""
    return card_text(card_metadata(a), body)


def make_reproducible(path: Path) -> None:
    """Rewrite a .keras zip so identical weights give identical bytes (no git churn on retrain).

    Keras stamps the save date, zip entry times and python id()s (`shared_object_id`) into the
    archive; pin the first two and renumber the ids in order of appearance (they only pair up
    shared objects on load).
    """
    with zipfile.ZipFile(path) as zin:
        entries = [(info, zin.read(info.filename)) for info in zin.infolist()]
    ids: dict[str, str] = {}

    def renumber(m: re.Match[str]) -> str:
        return f'"shared_object_id": {ids.setdefault(m.group(1), str(len(ids) + 1))}'

    with zipfile.ZipFile(path, "w") as zout:
        for info, payload in entries:
            if info.filename == "metadata.json":
                meta = json.loads(payload) | {"date_saved": "1980-01-01@00:00:00"}
                payload = json.dumps(meta).encode()
            elif info.filename == "config.json":
                text = re.sub(r'"shared_object_id": (\d+)', renumber, payload.decode())
                payload = text.encode()
            pinned = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            pinned.compress_type = info.compress_type
            pinned.external_attr = 0o644 << 16
            zout.writestr(pinned, payload)


def write_artifact(a: Artifact) -> Path:
    """Save model, config and card under models/<name>/, verifying a safe-mode reload."""
    root = MODELS_DIR / a.name
    path = root / "1" / "model.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    a.model.save(path)
    make_reproducible(path)
    keras.saving.load_model(path, safe_mode=True)  # fails loudly if anything needs custom code
    size = path.stat().st_size
    if size >= MAX_MODEL_BYTES:
        raise ValueError(f"{path} is {size} bytes, over the 2 MB limit")
    with open(root / "config.yaml", "w") as f:
        options = {"sort_keys": False, "width": 100, "default_flow_style": None}
        yaml.safe_dump(config_dict(a), f, allow_unicode=True, **options)
    (root / CARD).write_text(model_card(a, size))
    return path
