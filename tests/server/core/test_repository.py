"""The model repository in-process: discovery, versions, failed loads and which version a
request means (`resolve` for serving, `status` for metadata)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from seqserve_server.core.errors import ModelNotFound, ModelNotReady
from seqserve_server.core.repository import ModelRepository, ModelState
from tests.support.model_zoo import one_to_one
from tests.support.on_disk import loaded, save_corrupt, save_model


def _save(path: Path, seed: int) -> None:
    save_model(path, one_to_one, seed)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    root = tmp_path_factory.mktemp("repository")
    _save(root / "two" / "1", 1)
    _save(root / "two" / "2", 2)
    _save(root / "newer_broken" / "1", 3)
    save_corrupt(root / "newer_broken" / "2")
    _save(root / "misspelt" / "1", 4)
    (root / "misspelt" / "config.yaml").write_text("max_sequnce_length: 5\n")
    (root / "no_versions").mkdir()
    (root / "no_versions" / "config.yaml").write_text(yaml.safe_dump({"description": "later"}))
    _save(root / ".hidden" / "1", 5)
    _save(root / "_private" / "1", 6)
    (root / "notes").mkdir()
    (root / "notes" / "README.md").write_text("not a model")
    return loaded(root)


def test_discovery_finds_model_directories_only(repo: ModelRepository) -> None:
    names = sorted(e.name for e in repo.entries())
    assert names == ["misspelt", "newer_broken", "no_versions", "two"]
    assert sorted(repo.entry("two").versions) == [1, 2]
    assert repo.has("two") and repo.has("two", 2) and not repo.has("two", 3)
    assert not repo.has("notes")


def test_the_newest_ready_version_is_served_unless_one_is_named(repo: ModelRepository) -> None:
    newest, first = repo.resolve("two"), repo.resolve("two", 1)
    assert (newest.version, first.version) == (2, 1)
    x = np.ones((1, 4), dtype=np.float32)
    # two different files: the versions compute different things
    assert not np.allclose(newest.runtime.compute(x), first.runtime.compute(x))
    assert repo.ready_models().count(newest) == 1


def test_a_version_that_fails_to_load_keeps_its_reason(repo: ModelRepository) -> None:
    broken = repo.entry("newer_broken").versions[2]
    assert broken.state is ModelState.FAILED and broken.ready is None
    assert "cannot load model.keras" in broken.error
    assert repo.resolve("newer_broken").version == 1  # the older version still serves
    with pytest.raises(ModelNotReady, match="version 2 is not ready: cannot load") as failed:
        repo.resolve("newer_broken", 2)
    assert not failed.value.loading


def test_a_misspelt_config_key_fails_that_model_naming_the_key(repo: ModelRepository) -> None:
    status = repo.entry("misspelt").versions[1]
    assert status.state is ModelState.FAILED
    assert "unknown key 'max_sequnce_length'" in status.error
    with pytest.raises(ModelNotReady, match="max_sequnce_length"):
        repo.resolve("misspelt")
    assert repo.resolve("two").version == 2  # the others serve


def test_unknown_names_and_versions(repo: ModelRepository) -> None:
    with pytest.raises(ModelNotFound, match=r"'nope' is not in the repository \(available: mis"):
        repo.resolve("nope")
    with pytest.raises(
        ModelNotFound, match=r"'two' version 7 is not in the repository \(available: v1, v2\)"
    ):
        repo.resolve("two", 7)
    with pytest.raises(ModelNotFound):
        repo.status("two", 7)


def test_a_model_without_versions_is_listed_with_its_reason(repo: ModelRepository) -> None:
    entry = repo.entry("no_versions")
    assert "no version directories" in entry.error
    with pytest.raises(ModelNotReady, match="no version directories"):
        repo.resolve("no_versions")
    with pytest.raises(ModelNotFound, match="no version directories"):
        repo.status("no_versions")


def test_status_describes_any_state_resolve_serves_only_ready(repo: ModelRepository) -> None:
    """Metadata asks for the served version by default, or any version by number."""
    assert repo.status("newer_broken").version == 1  # the one resolve serves
    assert repo.status("newer_broken", 2).state is ModelState.FAILED
    assert repo.status("misspelt").state is ModelState.FAILED  # none ready: the newest
    assert repo.status("two").ready == repo.resolve("two")
