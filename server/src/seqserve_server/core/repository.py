"""The model repository on disk: `<root>/<name>/config.yaml`, `<root>/<name>/<N>/model.keras`.

Every version found is loaded; a version that cannot load is kept as FAILED with its reason so
that logs, health and listings say why, while the other models keep serving. Serving code gets a
`ReadyModel` (`resolve`), whose runtime is always there; a `VersionStatus` (any state) is for
listings, health and metadata only. Which version a request means is decided here, nowhere else.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .classification import Labels, output_labels
from .errors import ModelLoadError, ModelNotFound, ModelNotReady, without_paths
from .limits import RequestLimits
from .model_config import ModelConfig, find_config, read_config, selected_versions
from .modes import Mode
from .observer import NullObserver, Observer
from .reference_cache import ReferenceCache, file_sha256, stored_references
from .runtime import ModelRuntime

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"


class ModelState(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    UNLOADED = "unloaded"  # unloaded on request, or not in the model's version_policy


@dataclass(frozen=True)
class ReadyModel:
    """A loaded version that computes: what serving code gets from `ModelRepository.resolve`."""

    name: str
    version: int
    config: ModelConfig
    limits: RequestLimits
    runtime: ModelRuntime
    labels: Labels = field(default_factory=dict)  # by output name (classification.py)
    digest: str = ""  # SHA-256 of the model file: what a resume token is bound to

    @property
    def mode(self) -> Mode:
        return self.runtime.mode


@dataclass
class VersionStatus:
    """A version on disk and how its load went: what listings, health and metadata show.
    `ready` is set once it loaded (state READY)."""

    name: str
    version: int
    path: Path
    config: ModelConfig
    state: ModelState = ModelState.LOADING
    error: str = ""
    load_seconds: float = 0.0
    limits: RequestLimits = field(default_factory=RequestLimits)
    ready: ReadyModel | None = None
    changed_at: float = field(default_factory=time.time)  # wall time of the last transition
    fingerprint: tuple = ()  # what on disk made it (model file and config: size, mtime)

    def transition(self, state: ModelState, error: str = "") -> None:
        self.state, self.error, self.changed_at = state, error, time.time()


@dataclass
class ModelEntry:
    name: str
    versions: dict[int, VersionStatus] = field(default_factory=dict)
    error: str = ""  # a model-level problem (bad config, no versions)

    @property
    def newest_ready(self) -> ReadyModel | None:
        ready = [v.ready for v in self.versions.values() if v.ready is not None]
        return max(ready, key=lambda r: r.version, default=None)

    def version(self, number: int) -> VersionStatus:
        """Version `number` of this model, or ModelNotFound naming the versions there are."""
        if number not in self.versions:
            known = ", ".join(f"v{v}" for v in sorted(self.versions))
            raise ModelNotFound(self.name, number, hint=known)
        return self.versions[number]


Loader = Callable[[VersionStatus], ModelRuntime]


def _labels(config: ModelConfig, runtime: ModelRuntime) -> Labels:
    """The config's labels by output name, or the load fails saying why."""
    try:
        return output_labels(config.labels, runtime.signature.outputs)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc


def load_runtime(entry: VersionStatus) -> ModelRuntime:
    path = entry.path / MODEL_FILE
    return ModelRuntime.load(path, entry.config.mode, entry.limits.max_sequence_length)


class ModelRepository:
    def __init__(
        self,
        root: Path,
        loader: Loader = load_runtime,
        observer: Observer | None = None,
        limits: RequestLimits | None = None,
        references: ReferenceCache | None = None,
    ) -> None:
        self.root = root
        self._loader = loader
        self._references = references  # the proof's eager outputs, kept between starts
        self._observer = observer or NullObserver()
        self._limits = limits or RequestLimits()
        self._models: dict[str, ModelEntry] = {}

    def scan(self) -> None:
        """Find every model directory and its versions without loading them."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"model repository {self.root} is not a directory")
        for model_dir in sorted(p for p in self.root.iterdir() if _is_model_dir(p)):
            self._models[model_dir.name] = _scan_model(model_dir, self._limits)

    def load_all(
        self, threads: int = 1, then: Callable[[VersionStatus], None] | None = None
    ) -> None:
        """Load every version found, `threads` at a time (TensorFlow computes without the GIL;
        tracing is Python), largest model file first; `then(version)` runs right after each
        load on the same thread (its session program)."""
        pending = []
        for entry in self._models.values():
            for version in entry.versions.values():
                if version.state is ModelState.LOADING:
                    pending.append(version)
                elif version.state is ModelState.FAILED:  # its config was invalid
                    self._observer.model_loaded(version.name, version.version, "failed", 0.0)
        pending.sort(key=lambda v: v.fingerprint[0][0] if v.fingerprint else 0, reverse=True)

        def one(version: VersionStatus) -> None:
            self.load(version)
            if then is not None:
                then(version)

        if threads <= 1 or len(pending) <= 1:
            for version in pending:
                one(version)
            return
        with ThreadPoolExecutor(threads, thread_name_prefix="load") as pool:
            for _ in pool.map(one, pending):  # re-raises what `then` raised
                pass

    def scan_model(self, name: str) -> ModelEntry | None:
        """What the model's directory holds now (versions unloaded), None if it is gone."""
        if name not in self.model_names_on_disk():  # never a path outside the repository
            return None
        return _scan_model(self.root / name, self._limits)

    def model_names_on_disk(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if _is_model_dir(p))

    def put(self, entry: ModelEntry) -> None:
        """Make `entry` the model's listing (its versions already loaded or not)."""
        self._models[entry.name] = entry

    def remove(self, name: str) -> None:
        self._models.pop(name, None)

    def load(self, version: VersionStatus) -> None:
        """Load (and prove) one version in place: READY with its runtime, or FAILED saying why.
        Slow: callers run it off the event loop."""
        start = time.perf_counter()
        try:
            with stored_references(self._references, version.path / MODEL_FILE):
                runtime = self._loader(version)
            labels = _labels(version.config, runtime)
            digest = file_sha256(version.path / MODEL_FILE)
        except Exception as exc:  # noqa: BLE001 - tracing or warming one model can raise anything
            reason = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
            version.transition(ModelState.FAILED, without_paths(reason))
            log.error("model %s version %d failed to load: %s", version.name, version.version, exc)
        else:
            version.transition(ModelState.READY)
            version.ready = ReadyModel(
                version.name, version.version, version.config, version.limits, runtime, labels,
                digest,
            )  # fmt: skip
        version.load_seconds = time.perf_counter() - start
        self._observer.model_loaded(
            version.name, version.version, version.state.value, version.load_seconds
        )
        if version.ready is not None:
            self._log_ready(version.ready, version.load_seconds)

    def _log_ready(self, ready: ReadyModel, seconds: float) -> None:
        path = ready.runtime.compute_path
        self._observer.for_model(ready.name).compute_path(ready.version, "predict", path)
        log.info(
            "model %s version %d ready (%s, %s path) in %.2fs",
            ready.name, ready.version, ready.mode.value, path, seconds,
        )  # fmt: skip

    # -- queries -------------------------------------------------------------------------

    def has(self, name: str, version: int = 0) -> bool:
        """Whether the model (and, when non-zero, that version of it) is in the repository."""
        entry = self._models.get(name)
        return entry is not None and (not version or version in entry.versions)

    def entries(self) -> list[ModelEntry]:
        return list(self._models.values())

    def ready_models(self) -> list[ReadyModel]:
        """Every version that loaded, of every model."""
        return [v.ready for e in self.entries() for v in e.versions.values() if v.ready]

    def entry(self, name: str) -> ModelEntry:
        try:
            return self._models[name]
        except KeyError:
            raise ModelNotFound(name, available=tuple(sorted(self._models))) from None

    def resolve(self, name: str, version: int = 0) -> ReadyModel:
        """The version a request for `name` means (0: the newest ready one), ready to compute;
        else ModelNotFound or ModelNotReady saying why."""
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
        status = entry.version(version)
        if status.ready is None:
            loading = status.state is ModelState.LOADING
            raise ModelNotReady(name, version, status.error or status.state.value, loading)
        return status.ready

    def status(self, name: str, version: int = 0) -> VersionStatus:
        """The version a status or metadata request for `name` is about, in any state: as asked,
        else the one `resolve` would serve, else the newest there is."""
        entry = self.entry(name)
        if version:
            return entry.version(version)
        if not entry.versions:
            raise ModelNotFound(entry.name, 0, hint=entry.error)
        newest = entry.newest_ready
        return entry.versions[newest.version if newest else max(entry.versions)]


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
    numbers = {n: p for p in model_dir.iterdir() if (n := _version_of(p))}
    chosen = selected_versions(config.version_policy, set(numbers)) if config else set(numbers)
    config_stamp = _stamp(find_config(model_dir))
    for number, path in numbers.items():
        config_or_default = config or ModelConfig()
        version = VersionStatus(
            model_dir.name, number, path, config_or_default,
            limits=limits.for_model(config_or_default),
        )  # fmt: skip
        version.fingerprint = (_stamp(path / MODEL_FILE), config_stamp)
        if config is None:
            version.transition(ModelState.FAILED, entry.error)
        elif number not in chosen:
            version.transition(ModelState.UNLOADED, "not selected by the model's version_policy")
        entry.versions[number] = version
    if not entry.versions:
        entry.error = (
            entry.error or f"no version directories (e.g. {model_dir.name}/1/{MODEL_FILE})"
        )
    return entry


def _stamp(path: Path | None) -> tuple[int, int]:
    """A file's size and modification time (0, 0 when missing): a change means reload."""
    try:
        stat = path.stat() if path is not None else None
    except OSError:
        stat = None
    return (stat.st_size, stat.st_mtime_ns) if stat is not None else (0, 0)
