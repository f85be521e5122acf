"""The proof's eager outputs kept on disk (core/reference_cache.py), through the real loading code
on bundled models: a warm start computes no eager Keras output yet still proves and serves what
Keras computes; a changed model file, a corrupt entry or an unwritable directory never changes
what is served."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from seqserve_server.core.compute_threads import ModelThreads
from seqserve_server.core.observer import ModelObservers
from seqserve_server.core.proof import TOL
from seqserve_server.core.reference_cache import ReferenceCache
from seqserve_server.core.repository import ModelRepository, ModelState, ReadyModel
from seqserve_server.core.sessions import SessionManager
from seqserve_server.core.stepping.programs import StepProgram
from tests.support.bundled import MODELS, SESSION_MODELS, example_input


def _repository(tmp_path: Path, *names: str) -> Path:
    root = tmp_path / "repo"
    for name in names:
        shutil.copytree(MODELS / name, root / name, ignore=shutil.ignore_patterns("*.md"))
    return root


def _load(root: Path, cache: ReferenceCache, sessions: bool = False) -> dict[str, ReadyModel]:
    """Load as the server does (two loading threads, session programs right after each load)."""
    repository = ModelRepository(root, references=cache)
    repository.scan()
    threads = ModelThreads(1)
    manager = SessionManager(repository, threads, ModelObservers())
    built: dict[str, StepProgram | str] = {}

    def then(version: object) -> None:
        ready = version.ready  # type: ignore[attr-defined]
        if sessions and ready is not None:
            built[ready.name] = manager.build(ready)

    repository.load_all(threads=2, then=then)
    threads.shutdown()
    for entry in repository.entries():
        for version in entry.versions.values():
            assert version.state is ModelState.READY, version.error
    assert all(isinstance(built[n], StepProgram) for n in SESSION_MODELS if n in built), built
    return {m.name: m for m in repository.ready_models()}


def _serves_keras(ready: ReadyModel, x: np.ndarray) -> None:
    want = keras.ops.convert_to_numpy(ready.runtime.model(x, training=False))
    np.testing.assert_allclose(ready.runtime.compute(x), want, rtol=TOL, atol=TOL)


def test_a_warm_start_computes_no_eager_output_and_still_serves_what_keras_computes(
    tmp_path: Path,
) -> None:
    root = _repository(tmp_path, "iris_classifier", "digit_classifier")
    cold = ReferenceCache(tmp_path / "cache")
    first = _load(root, cold, sessions=True)
    assert cold.hits == 0 and cold.misses > 0
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == cold.misses

    warm = ReferenceCache(tmp_path / "cache")
    second = _load(root, warm, sessions=True)
    assert warm.misses == 0 and warm.hits == cold.misses  # the session proofs' prefixes too
    rng = np.random.default_rng(3)
    for name, ready in second.items():
        assert ready.runtime.proof == first[name].runtime.proof  # proven again, same path
        _serves_keras(ready, example_input(name, rng))


def test_a_changed_model_file_misses_and_is_proven_on_its_own_outputs(tmp_path: Path) -> None:
    root = _repository(tmp_path, "iris_classifier")
    _load(root, ReferenceCache(tmp_path / "cache"))
    path = root / "iris_classifier" / "1" / "model.keras"
    model = keras.saving.load_model(path, safe_mode=True, compile=False)
    model.set_weights([w * 1.5 + 0.1 for w in model.get_weights()])  # other numbers, same shape
    model.save(path)

    cache = ReferenceCache(tmp_path / "cache")
    ready = _load(root, cache)["iris_classifier"]
    assert cache.hits == 0 and cache.misses > 0
    _serves_keras(ready, example_input("iris_classifier", np.random.default_rng(4)))


def test_corrupt_or_tampered_entries_are_computed_again(tmp_path: Path) -> None:
    root = _repository(tmp_path, "iris_classifier")
    _load(root, ReferenceCache(tmp_path / "cache"))
    entries = sorted((tmp_path / "cache").rglob("*.npz"))
    assert len(entries) == 2  # iris: batch 1 and batch 3
    entries[0].write_bytes(entries[0].read_bytes()[:50])  # truncated
    with np.load(entries[1]) as stored:  # plausible, wrong output under the old checksum
        output, check = stored["output"] + 1.0, stored["check"]
    np.savez(entries[1].with_suffix(""), output=output, check=check)

    cache = ReferenceCache(tmp_path / "cache")
    ready = _load(root, cache)["iris_classifier"]
    assert cache.misses == 2 and cache.hits == 0
    _serves_keras(ready, example_input("iris_classifier", np.random.default_rng(5)))
    again = ReferenceCache(tmp_path / "cache")  # rewritten: all good now
    _load(root, again)
    assert again.misses == 0


def test_an_unwritable_cache_directory_only_turns_the_cache_off(tmp_path: Path) -> None:
    root = _repository(tmp_path, "iris_classifier")
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache directory cannot be made under a file")
    cache = ReferenceCache(blocker / "cache")
    ready = _load(root, cache)["iris_classifier"]
    assert not cache.writable and cache.hits == 0
    _serves_keras(ready, example_input("iris_classifier", np.random.default_rng(6)))


@pytest.mark.parametrize("directory", ["", "cache"])
def test_the_server_setting_names_the_directory_or_turns_it_off(
    tmp_path: Path, directory: str
) -> None:
    from seqserve_server.app import App
    from seqserve_server.config import Settings

    value = str(tmp_path / directory) if directory else ""

    async def built() -> App:  # grpc.aio's server wants a running loop
        return App(Settings(model_repository=tmp_path, proof_cache_dir=value, metrics_port=-1))

    app = asyncio.run(built())
    app.loader.shutdown()
    references = app.repository._references
    assert (references.directory if references else None) == (Path(value) if value else None)
