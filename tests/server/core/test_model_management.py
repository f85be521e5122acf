"""ModelManager in-process: versions come, change and go while the repository serves."""

from __future__ import annotations

import asyncio
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml

from seqserve_server.core.batch import Batch
from seqserve_server.core.compute_threads import ModelThreads
from seqserve_server.core.errors import ModelNotFound, ModelNotReady
from seqserve_server.core.inference import InferenceService
from seqserve_server.core.management import ModelManager
from seqserve_server.core.model_config import ModelConfig
from seqserve_server.core.observer import ModelObservers, NullObserver
from seqserve_server.core.repository import ModelRepository, ModelState
from seqserve_server.core.sessions import SessionManager
from tests.support.model_zoo import aligned, write_repository
from tests.support.on_disk import save_corrupt, save_model


class _Core:
    def __init__(self, root: Path) -> None:
        self.threads = ModelThreads(1)
        self.loader = ThreadPoolExecutor(1)
        self.loads: list[str] = []  # the state of every load, in order
        self.repository = ModelRepository(root, observer=_Recorder(self.loads))
        self.repository.scan()
        self.repository.load_all()
        observers = ModelObservers()
        self.sessions = SessionManager(self.repository, self.threads, observers)
        self.sessions.prepare_all()
        self.inference = InferenceService(self.repository, self.threads, observers)
        self.manager = ModelManager(
            self.repository, self.inference, self.sessions, self.threads, self.loader
        )
        self.health: dict[str, bool] = {}
        self.manager.listeners.append(self._heard)

    async def _heard(self, name: str, serving: bool) -> None:
        self.health[name] = serving

    def states(self) -> dict[int, ModelState]:
        entry = self.repository.entry("aligned")
        return {n: v.state for n, v in entry.versions.items()}

    def close(self) -> None:
        self.threads.shutdown()
        self.loader.shutdown()


@pytest.fixture
def core(tmp_path: Path) -> _Core:
    made = _Core(write_repository(tmp_path, {"aligned"}))
    yield made
    made.close()


def _x() -> Batch:
    return Batch(np.ones((1, 5, 3), np.float32))


@pytest.mark.slow  # tests/server/test_model_management.py covers it through gRPC
def test_a_new_version_serves_once_loaded_and_a_broken_one_leaves_it_serving(core: _Core) -> None:
    root = core.repository.root / "aligned"
    save_model(root / "2", aligned, seed=2)

    async def scenario() -> None:
        await core.manager.poll()
        assert core.repository.resolve("aligned").version == 2
        assert core.states() == {1: ModelState.READY, 2: ModelState.READY}
        result = await core.inference.predict(core.repository.resolve("aligned"), _x())
        assert result.version == 2
        save_corrupt(root / "3")
        await core.manager.poll()
        assert core.states()[3] is ModelState.FAILED
        assert core.repository.resolve("aligned").version == 2
        assert core.health["aligned"]

    asyncio.run(scenario())


@pytest.mark.slow  # tests/server/test_model_management.py covers it through gRPC
def test_unload_ends_open_sessions_and_load_brings_the_model_back(core: _Core) -> None:
    async def scenario() -> None:
        session = core.sessions.open("aligned")
        await core.sessions.step(session, np.ones((2, 3), np.float32))
        await core.manager.unload("aligned")
        assert core.states() == {1: ModelState.UNLOADED}
        assert core.health["aligned"] is False
        with pytest.raises(ModelNotReady, match="session ended: the model was unloaded"):
            await core.sessions.step(session, np.ones((2, 3), np.float32))
        with pytest.raises(ModelNotReady, match="unloaded on request"):
            core.repository.resolve("aligned")
        await core.manager.poll()  # polling leaves a model unloaded on request alone
        assert core.states() == {1: ModelState.UNLOADED}
        await core.manager.load("aligned")
        assert core.states() == {1: ModelState.READY}
        assert core.health["aligned"]
        with pytest.raises(ModelNotFound):
            await core.manager.load("no_such_model")

    asyncio.run(scenario())


@pytest.mark.slow  # tests/server/test_model_management.py covers it through gRPC
def test_version_policy_latest_and_specific(core: _Core) -> None:
    root = core.repository.root / "aligned"
    save_model(root / "2", aligned, seed=2)
    config = yaml.safe_load((root / "config.yaml").read_text())

    async def with_policy(policy: object) -> dict[int, ModelState]:
        (root / "config.yaml").write_text(yaml.safe_dump(config | {"version_policy": policy}))
        await core.manager.load("aligned")
        return core.states()

    async def scenario() -> None:
        assert await with_policy({"latest": 1}) == {1: ModelState.UNLOADED, 2: ModelState.READY}
        assert await with_policy({"specific": [1]}) == {1: ModelState.READY, 2: ModelState.UNLOADED}
        assert core.repository.resolve("aligned").version == 1

    asyncio.run(scenario())


def test_version_policy_default_loads_every_version() -> None:
    assert ModelConfig().version_policy == "all"


def test_a_changed_copy_of_a_version_replaces_it_and_its_sessions_end(core: _Core) -> None:
    version_dir = core.repository.root / "aligned" / "1"

    async def scenario() -> None:
        old = core.sessions.open("aligned")
        before = await core.inference.predict(core.repository.resolve("aligned"), _x())
        shutil.rmtree(version_dir)
        save_model(version_dir, aligned, seed=99)  # other weights, same version number
        await core.manager.load("aligned")
        after = await core.inference.predict(core.repository.resolve("aligned"), _x())
        assert after.version == 1
        assert not np.allclose(before.outputs.values, after.outputs.values)
        with pytest.raises(ModelNotReady, match="session ended: its version was replaced"):
            await core.sessions.step(old, np.ones((2, 3), np.float32))
        new = core.sessions.open("aligned")  # the new copy's sessions are ready at once
        output = await core.sessions.step(new, np.ones((5, 3), np.float32)[0:1])
        assert output is not None

    asyncio.run(scenario())


def test_only_model_directories_of_the_repository_load(core: _Core) -> None:
    async def scenario() -> None:
        for name in ("../aligned", "aligned/1", ".hidden", ""):
            with pytest.raises(ModelNotFound):
                await core.manager.load(name)

    asyncio.run(scenario())


def test_a_broken_copy_of_a_serving_version_leaves_it_serving_and_is_tried_once(
    core: _Core,
) -> None:
    async def scenario() -> None:
        core.loads.clear()
        (core.repository.root / "aligned" / "1" / "model.keras").write_bytes(b"not a zip")
        await core.manager.poll()
        await core.manager.poll()
        assert core.loads == ["failed"]
        assert core.states() == {1: ModelState.READY}
        result = await core.inference.predict(core.repository.resolve("aligned"), _x())
        assert result.version == 1

    asyncio.run(scenario())


class _Recorder(NullObserver):
    def __init__(self, loads: list[str]) -> None:
        self.loads = loads

    def model_loaded(self, model: str, version: int, state: str, seconds: float) -> None:
        self.loads.append(state)
