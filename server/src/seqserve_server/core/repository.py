"""The model repository on disk: `<root>/<name>/config.yaml`, `<root>/<name>/<N>/model.keras`.

Every version found is loaded; a version that cannot load is kept as FAILED with its reason so
that logs, health and listings say why, while the other models keep serving.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelLoadError, ModelNotFound, ModelNotReady, without_paths
from .limits import RequestLimits
from .model_config import ModelConfig, find_config, read_config
from .observer import NullObserver, Observer
from .runtime import ModelRuntime

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"


class ModelState(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass
class ModelVersion:
    name: str
    version: int
    path: Path
    config: ModelConfig
    state: ModelState = ModelState.LOADING
    error: str = ""
    runtime: ModelRuntime | None = None
    load_seconds: float = 0.0
    limits: RequestLimits = field(default_factory=RequestLimits)


@dataclass
class ModelEntry:
    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    error: str = ""  # a model-level problem (bad config, no versions)

    @property
    def newest_ready(self) -> ModelVersion | None:
        ready = [v for v in self.versions.values() if v.state is ModelState.READY]
        return max(ready, key=lambda v: v.version, default=None)


Loader = Callable[[ModelVersion], ModelRuntime]


def load_runtime(entry: ModelVersion) -> ModelRuntime:
    config = entry.config
    path = entry.path / MODEL_FILE
    runtime = ModelRuntime.load(path, config.mode, entry.limits.max_sequence_length)
    width = runtime.signature.output_shape[-1]
    if config.labels and runtime.signature.several_outputs:
        raise ModelLoadError("labels name the features of a single output; this model has several")
    if config.labels and len(config.labels) != width:
        raise ModelLoadError(f"config names {len(config.labels)} labels for {width} outputs")
    return runtime


class ModelRepository:
    def __init__(
        self,
        root: Path,
        loader: Loader = load_runtime,
        observer: Observer | None = None,
        limits: RequestLimits | None = None,
    ) -> None:
        self.root = root
        self._loader = loader
        self._observer = observer or NullObserver()
        self._limits = limits or RequestLimits()
        self._models: dict[str, ModelEntry] = {}

    def scan(self) -> None:
        """Find every model directory and its versions without loading them."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"model repository {self.root} is not a directory")
        for model_dir in sorted(p for p in self.root.iterdir() if _is_model_dir(p)):
            self._models[model_dir.name] = _scan_model(model_dir, self._limits)

    def load_all(self) -> None:
        for entry in self._models.values():
            for version in entry.versions.values():
                if version.state is ModelState.LOADING:
                    self._load(version)
                else:  # its config was invalid
                    self._observer.model_loaded(version.name, version.version, "failed", 0.0)

    def _load(self, version: ModelVersion) -> None:
        start = time.perf_counter()
        try:
            version.runtime = self._loader(version)
        except Exception as exc:  # noqa: BLE001 - tracing or warming one model can raise anything
            reason = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
            version.state, version.error = ModelState.FAILED, without_paths(reason)
            log.error("model %s version %d failed to load: %s", version.name, version.version, exc)
        else:
            version.state = ModelState.READY
        version.load_seconds = time.perf_counter() - start
        self._observer.model_loaded(
            version.name, version.version, version.state.value, version.load_seconds
        )
        if version.runtime is None:
            return
        path = version.runtime.compute_path
        self._observer.for_model(version.name).compute_path(version.version, "predict", path)
        log.info(
            "model %s version %d ready (%s, %s path) in %.2fs",
            version.name,
            version.version,
            version.runtime.mode.value,
            path,
            version.load_seconds,
        )

    # -- queries -------------------------------------------------------------------------

    def has(self, name: str, version: int = 0) -> bool:
        """Whether the model (and, when non-zero, that version of it) is in the repository."""
        entry = self._models.get(name)
        return entry is not None and (not version or version in entry.versions)

    def entries(self) -> list[ModelEntry]:
        return list(self._models.values())

    def entry(self, name: str) -> ModelEntry:
        try:
            return self._models[name]
        except KeyError:
            raise ModelNotFound(name, available=", ".join(sorted(self._models))) from None

    def resolve(self, name: str, version: int = 0) -> ModelVersion:
        """The requested version (0: the newest ready one), ready to compute."""
        entry = self.entry(name)
        if version == 0:
            chosen = entry.newest_ready
            if chosen is None:
                why = entry.error or "; ".join(
                    f"version {v.version}: {v.error or v.state.value}"
                    for v in entry.versions.values()
                )
                loading = any(v.state is ModelState.LOADING for v in entry.versions.values())
                newest = max(entry.versions, default=0)
                raise ModelNotReady(name, newest, why or "no versions", loading)
            return chosen
        if version not in entry.versions:
            raise ModelNotFound(name, version, ", ".join(f"v{v}" for v in sorted(entry.versions)))
        chosen = entry.versions[version]
        if chosen.state is not ModelState.READY:
            loading = chosen.state is ModelState.LOADING
            raise ModelNotReady(name, version, chosen.error or chosen.state.value, loading)
        return chosen


def _is_model_dir(path: Path) -> bool:
    """A model directory has a config or at least one numeric version directory."""
    if not path.is_dir() or path.name.startswith((".", "_")):
        return False
    return find_config(path) is not None or any(_version_of(p) for p in path.iterdir())


def _version_of(path: Path) -> int:
    return int(path.name) if path.is_dir() and path.name.isdigit() and int(path.name) > 0 else 0


def _scan_model(model_dir: Path, limits: RequestLimits) -> ModelEntry:
    entry = ModelEntry(model_dir.name)
    try:
        config = read_config(model_dir)
    except ModelLoadError as exc:
        entry.error = without_paths(str(exc))
        config = None
    for path in model_dir.iterdir():
        number = _version_of(path)
        if not number:
            continue
        config_or_default = config or ModelConfig()
        version = ModelVersion(
            model_dir.name, number, path, config_or_default,
            limits=limits.for_model(config_or_default),
        )  # fmt: skip
        if config is None:
            version.state, version.error = ModelState.FAILED, entry.error
        entry.versions[number] = version
    if not entry.versions:
        entry.error = (
            entry.error or f"no version directories (e.g. {model_dir.name}/1/{MODEL_FILE})"
        )
    return entry
