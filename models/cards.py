"""A model card's machine-readable part: YAML front matter at the top of `MODEL_CARD.md`.

A model's `config.yaml` holds only what the server reads (it refuses unknown keys). What training
measured (`evaluation`), what the input and output mean, and what a client needs to encode inputs
(`word_language`'s `vocabulary`) live in the card that documents them, as front matter that tests
and clients read and humans see at the top of the card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CARD = "MODEL_CARD.md"
_FENCE = "---\n"


def card_text(metadata: dict[str, Any], body: str) -> str:
    """The card: front matter, then the markdown body."""
    options: dict[str, Any] = {"sort_keys": False, "width": 100, "default_flow_style": None}
    return _FENCE + yaml.safe_dump(metadata, allow_unicode=True, **options) + _FENCE + "\n" + body


def split_card(text: str) -> tuple[dict[str, Any], str]:
    """(front matter, markdown body) of a card's text; a card without front matter has none."""
    if not text.startswith(_FENCE):
        return {}, text
    end = text.index("\n" + _FENCE, len(_FENCE) - 1)
    metadata = yaml.safe_load(text[len(_FENCE) : end + 1]) or {}
    return metadata, text[end + 1 + len(_FENCE) :].lstrip("\n")


def card_metadata(model_dir: Path) -> dict[str, Any]:
    """The front matter of `<model_dir>/MODEL_CARD.md`."""
    return split_card((model_dir / CARD).read_text())[0]
