"""Load, unload and reload models while the server runs: what every protocol and the poller call.

A version is loaded, proven and its sessions prepared off the event loop, out of sight; only then
does it enter the repository, in one step on the loop, so traffic moves to it at once and never
to a half-made version. A version that fails to load is listed with its reason while the ones
that served go on serving. Leaving versions stop taking new work at once; the work they hold
finishes on them (bounded by `drain_s`), then their batcher, step queue and threads go, and
their open sessions are ended with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

from .batching import DynamicBatcher
from .compute_threads import ModelThreads
from .errors import ModelNotFound, Unsupported
from .inference import InferenceService
from .observer import NullObserver, Observer
from .repository import ModelEntry, ModelRepository, ModelState, VersionStatus
from .sessions import SessionManager
from .stepping.programs import StepProgram

log = logging.getLogger(__name__)

HealthListener = Callable[[str, bool], Awaitable[None]]  # model name, has a ready version


class ModelManager:
    def __init__(
        self,
        repository: ModelRepository,
        inference: InferenceService,
        sessions: SessionManager,
        threads: ModelThreads,
        loader: Executor,
        observer: Observer | None = None,
        drain_s: float = 10.0,
        refusal: str = "",
    ) -> None:
        self.repository = repository
        self.refusal = refusal  # why callers may not load or unload models here ("": they may)
        self._inference = inference
        self._sessions = sessions
        self._threads = threads
        self._loader = loader
        self._built: dict[int, StepProgram | str] = {}  # by id of a version being loaded
        self._unloaded: set[str] = set()  # unloaded on request: polling leaves them be
        self._observer = observer or NullObserver()
        self._drain_s = drain_s
        self._lock = asyncio.Lock()  # one change at a time
        self.listeners: list[HealthListener] = []

    async def load(self, name: str) -> ModelEntry:
        """(Re)read the model's directory: load its new and changed versions in its policy,
        unload the rest. ModelNotFound when no such model directory exists."""
        self._check_allowed()
        async with self._lock:
            self._unloaded.discard(name)
            return await self._sync(name, required=True)

    async def unload(self, name: str) -> None:
        """Unload every version of the model (it stays listed, UNLOADED, until loaded again)."""
        self._check_allowed()
        async with self._lock:
            entry = self.repository.entry(name)
            self._unloaded.add(name)
            leaving = [v for v in entry.versions.values() if v.ready is not None]
            for version in leaving:
                version.transition(ModelState.UNLOADED, "unloaded on request")
            await self._retire(leaving, "the model was unloaded")
            await self._tell(name)

    def _check_allowed(self) -> None:
        if self.refusal:
            raise Unsupported(self.refusal)

    async def poll(self) -> None:
        """Pick up new, changed and removed models and versions in the repository directory."""
        async with self._lock:
            on_disk = set(self.repository.model_names_on_disk())
            for name in sorted(on_disk | {e.name for e in self.repository.entries()}):
                if name in self._unloaded and name in on_disk:
                    continue
                await self._sync(name, required=False)

    # -- one model ---------------------------------------------------------------------------

    async def _sync(self, name: str, required: bool) -> ModelEntry:
        fresh = self.repository.scan_model(name)
        current = self._current(name)
        if fresh is None:
            if required:
                known = tuple(self.repository.model_names_on_disk())
                raise ModelNotFound(name, available=known)
            if current is not None:  # the directory went away
                await self._retire(self._ready_versions(current), "the model left the repository")
                self.repository.remove(name)
                await self._tell(name)
            return ModelEntry(name)
        if current is not None and not required and _same(current, fresh):
            return current
        to_load = [
            v for n, v in fresh.versions.items()
            if v.state is ModelState.LOADING and not _unchanged(current, n, v)
        ]  # fmt: skip
        loop = asyncio.get_running_loop()
        for version in to_load:
            await loop.run_in_executor(self._loader, self._load, version)
        entry, leaving = self._merge(current, fresh, to_load)
        # From here to the drain, nothing awaits: traffic moves to the new versions in one step.
        self.repository.put(entry)
        batchers = self._detach(leaving, "its version was replaced or left the version_policy")
        for version in to_load:
            built = self._built.pop(id(version), None)
            if version.ready is not None and built is not None:
                self._sessions.install(version.ready, built)
        await self._drain(leaving, batchers)
        await self._tell(name)
        return entry

    def _load(self, version: VersionStatus) -> None:
        """Load, prove and build the session program of one version (on the loader thread)."""
        self.repository.load(version)
        if version.ready is not None:
            self._built[id(version)] = self._sessions.build(version.ready)

    def _merge(
        self, current: ModelEntry | None, fresh: ModelEntry, loaded: list[VersionStatus]
    ) -> tuple[ModelEntry, list[VersionStatus]]:
        """The model's new listing, and the ready versions it no longer serves."""
        old = current.versions if current is not None else {}
        ids = {id(v) for v in loaded}
        entry = ModelEntry(fresh.name, error=fresh.error)
        for number, version in fresh.versions.items():
            previous = old.get(number)
            serving = previous is not None and previous.ready is not None
            if id(version) in ids and version.ready is None and serving:
                log.error("model %s version %d: the new copy failed to load, the old one serves "
                          "on: %s", fresh.name, number, version.error)  # fmt: skip
                assert previous is not None
                previous.fingerprint = version.fingerprint  # no retry until the files change
                entry.versions[number] = previous
            elif id(version) not in ids and version.state is ModelState.LOADING and previous:
                entry.versions[number] = previous  # unchanged on disk: kept as it is
            else:
                entry.versions[number] = version
        kept = {id(v) for v in entry.versions.values()}
        leaving = [v for v in old.values() if v.ready is not None and id(v) not in kept]
        return entry, leaving

    async def _retire(self, versions: list[VersionStatus], why: str) -> None:
        await self._drain(versions, self._detach(versions, why))

    def _detach(self, versions: list[VersionStatus], why: str) -> list[DynamicBatcher]:
        """No new work reaches the versions; their sessions end. Their batchers, to drain."""
        batchers = []
        for version in versions:
            version.ready = None  # no new request resolves it; the ones in flight hold theirs
            ended = self._sessions.drop(version.name, version.version, why)
            if ended:
                log.info("%s version %d: %d sessions ended (%s)",
                         version.name, version.version, ended, why)  # fmt: skip
            batcher = self._inference.drop(version.name, version.version)
            if batcher is not None:
                batchers.append(batcher)
        return batchers

    async def _drain(self, versions: list[VersionStatus], batchers: list[DynamicBatcher]) -> None:
        """Let the work queued on leaving versions finish (bounded), then free what they hold."""
        deadline = time.monotonic() + self._drain_s
        while any(b.queue_depth or b.in_flight for b in batchers) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for batcher in batchers:
            batcher.close()
        for version in versions:
            if not self._serves(version.name, version.version):  # else a new copy uses them
                self._threads.release(version.name, version.version)
            self._observer.model_unloaded(version.name, version.version)
            log.info("model %s version %d unloaded", version.name, version.version)

    # -- helpers ----------------------------------------------------------------------------

    def _current(self, name: str) -> ModelEntry | None:
        return self.repository.entry(name) if self.repository.has(name) else None

    def _serves(self, name: str, number: int) -> bool:
        entry = self._current(name)
        version = entry.versions.get(number) if entry is not None else None
        return version is not None and version.ready is not None

    @staticmethod
    def _ready_versions(entry: ModelEntry) -> list[VersionStatus]:
        return [v for v in entry.versions.values() if v.ready is not None]

    async def _tell(self, name: str) -> None:
        serving = self.repository.has(name) and self.repository.entry(name).newest_ready is not None
        for listener in self.listeners:
            await listener(name, serving)


def _unchanged(current: ModelEntry | None, number: int, fresh: VersionStatus) -> bool:
    """The version is loaded (or failed) from the very same files: nothing to do."""
    if current is None or number not in current.versions:
        return False
    previous = current.versions[number]
    loaded = previous.state in (ModelState.READY, ModelState.FAILED)
    return loaded and previous.fingerprint == fresh.fingerprint


def _same(current: ModelEntry, fresh: ModelEntry) -> bool:
    """Nothing on disk changed since the model was last read (polling's quick check)."""
    if set(current.versions) != set(fresh.versions) or current.error != fresh.error:
        return False
    return all(
        current.versions[n].fingerprint == v.fingerprint
        and (current.versions[n].state is ModelState.UNLOADED) == (v.state is ModelState.UNLOADED)
        for n, v in fresh.versions.items()
    )
