"""A model's `config.yaml` (or `config.toml`) in the repository."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import tomllib
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ModelLoadError
from .modes import Mode

CONFIG_NAMES = ("config.yaml", "config.yml", "config.toml")


class Latest(BaseModel):
    """The `latest` N version numbers on disk (TF Serving's and Triton's meaning)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    latest: int = Field(ge=1)


class Specific(BaseModel):
    """Exactly these version numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    specific: tuple[int, ...] = Field(min_length=1)


VersionPolicy = Literal["all"] | Latest | Specific


def selected_versions(policy: VersionPolicy, on_disk: set[int]) -> set[int]:
    """The versions on disk a model's `version_policy` loads."""
    if isinstance(policy, Latest):
        return set(sorted(on_disk)[-policy.latest :])
    if isinstance(policy, Specific):
        return on_disk & set(policy.specific)
    return set(on_disk)


class ModelConfig(BaseModel):
    """What an operator may state about a model; everything else comes from the model file.
    Unknown keys are refused: a misspelt limit must fail the model, not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    mode: Mode | None = None
    # A classifier's labels (feature index -> label); a model with several outputs names each
    # labelled output's: {output name: [labels]}.
    labels: list[str] | dict[str, list[str]] = Field(default_factory=list)
    max_batch_size: int = Field(default=64, ge=1)
    # Request limits; 0: the server's default (its --max-sequence-length etc.).
    max_sequence_length: int = Field(default=0, ge=0)
    max_request_elements: int = Field(default=0, ge=0)
    max_inputs_per_request: int = Field(default=0, ge=0)
    max_stream_messages: int = Field(default=0, ge=0)
    max_string_bytes: int = Field(default=0, ge=0)
    max_request_string_bytes: int = Field(default=0, ge=0)
    # How long a partial batch may wait for more callers (Triton's semantics); 0: never.
    max_queue_delay_ms: float = Field(default=0.0, ge=0)
    max_queue_size: int = Field(default=4096, ge=1)  # sequences waiting, not requests
    # The budget of a Predict call that has no deadline, in seconds; 0: the server's
    # --default-deadline-s (whose 0 means none). Admission refuses a call at once when its
    # deadline cannot cover the estimated wait.
    default_deadline_s: float = Field(default=0.0, ge=0)
    max_sessions: int = Field(default=256, ge=0)
    session_idle_timeout_s: float = Field(default=300.0, gt=0)
    # Which versions on disk load (`all`, `{latest: N}`, `{specific: [..]}`); the newest ready
    # one among them serves requests that name no version.
    version_policy: VersionPolicy = "all"


def find_config(model_dir: Path) -> Path | None:
    return next((model_dir / n for n in CONFIG_NAMES if (model_dir / n).is_file()), None)


def read_config(model_dir: Path) -> ModelConfig:
    """Parse and validate a model's config; a model without one gets the defaults."""
    path = find_config(model_dir)
    if path is None:
        return ModelConfig()
    try:
        data = _parse(path)
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise ModelLoadError(f"invalid {path.name}: {_problems(exc)}") from exc
    except (ValueError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"invalid {path.name}: {exc}") from exc


def _problems(exc: ValidationError) -> str:
    """One line per bad key, naming it (pydantic's own text adds URLs and input echoes)."""
    known = ", ".join(ModelConfig.model_fields)
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown key {key!r} (known keys: {known})")
        else:
            problems.append(f"{key}: {error['msg']}")
    return "; ".join(problems)


def _parse(path: Path) -> dict[str, Any]:
    text = path.read_text()
    data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError("the top level must be a mapping")
    return data
