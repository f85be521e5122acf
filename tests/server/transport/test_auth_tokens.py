"""The tokens file and the authorization decisions that need no server."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml

from seqserve.v1 import seqserve_pb2 as pb
from seqserve_server.core.call_admission import CallerPolicy
from seqserve_server.transport import auth, auth_tokens
from seqserve_server.transport.auth_tokens import TokensFile, TokensFileError, parse


def entry(name: str, token: str, models: list[str], scopes: list[str]) -> dict[str, object]:
    digest = hashlib.sha256(token.encode()).hexdigest()
    return {"name": name, "sha256": digest, "models": models, "scopes": scopes}


def write(path: Path, *entries: dict[str, object]) -> None:
    path.write_text(yaml.safe_dump({"tokens": list(entries)}))


def test_a_token_is_found_by_its_digest_and_globs_match(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    write(path, entry("app", "s3cret", ["text-*", "aligned"], ["infer"]))
    grant = TokensFile(path).lookup("s3cret")
    assert grant is not None and grant.name == "app" and grant.scopes == {"infer"}
    assert grant.covers("aligned") and grant.covers("text-small")
    assert not grant.covers("aligned2") and not grant.covers("other")
    assert TokensFile(path).lookup("s3cret ") is None
    assert "s3cret" not in path.read_text()


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({"tokens": [{"name": "a", "sha256": "abc", "models": [], "scopes": []}]}, "sha256"),
        ({"tokens": [{**entry("a", "t", [], []), "scopes": ["everything"]}]}, "scopes"),
        ({"tokens": [{**entry("a", "t", [], []), "models": "aligned"}]}, "models"),
        ({"tokens": [entry("a", "t", [], []), entry("a", "u", [], [])]}, "unique"),
        ({"token": []}, "tokens"),
        ({"tokens": [{**entry("a", "t", [], []), "weight": 0}]}, r"tokens\[0\]\.weight: .*> 0"),
        ({"tokens": [{**entry("a", "t", [], []), "max_concurrent": 1.5}]}, "max_concurrent"),
        ({"tokens": [{**entry("a", "t", [], []), "rate": -1}]}, r"rate: .*got -1"),
        ({"tokens": [{**entry("a", "t", [], []), "rate": "fast"}]}, "rate"),
    ],
)
def test_a_bad_file_is_refused_naming_the_entry(bad: object, says: str) -> None:
    with pytest.raises(TokensFileError, match=says):
        parse(yaml.safe_dump(bad))


def test_a_token_carries_its_share_and_caps_and_others_get_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    shared = {"weight": 2.5, "max_concurrent": 8, "rate": 100}
    write(path, {**entry("batch", "one", ["*"], ["infer"]), **shared}, entry("app", "two", [], []))
    tokens = TokensFile(path)
    assert tokens.policy("batch") == CallerPolicy(weight=2.5, max_concurrent=8, rate=100.0)
    assert tokens.policy("app") == CallerPolicy() == tokens.policy("peer:127.0.0.1")


def test_a_removed_token_is_refused_after_reload_and_a_bad_edit_keeps_the_last_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth_tokens, "RECHECK_S", 0.0)
    path = tmp_path / "tokens.yaml"
    write(path, entry("a", "one", ["*"], ["read"]), entry("b", "two", ["*"], ["read"]))
    tokens = TokensFile(path)
    assert tokens.lookup("one") is not None
    write(path, entry("b", "two", ["*"], ["read"]))
    os.utime(path, ns=(1, 1))  # a new modification time, however coarse the clock
    assert tokens.lookup("one") is None and tokens.lookup("two") is not None
    path.write_text("tokens: [")  # half written
    os.utime(path, ns=(2, 2))
    assert tokens.lookup("two") is not None


def test_each_request_type_names_its_model() -> None:
    assert auth.model_named(pb.PredictRequest(model_name="m")) == "m"
    assert auth.model_named(pb.GetModelMetadataRequest(model_name="m")) == "m"
    opening = pb.SessionRequest(open=pb.SessionOpen(model_name="m"))
    assert auth.model_named(opening) == "m"
    assert auth.model_named(pb.SessionRequest()) is None
    assert auth.model_named(pb.ListModelsRequest()) is None


def test_every_method_of_both_services_has_a_scope() -> None:
    """A method missing from the table would need `admin`: this says none is forgotten."""
    from seqserve_server.transport.open_inference.reflection import reflection_pool

    v2 = reflection_pool().FindServiceByName("inference.GRPCInferenceService")
    served = {m.name for m in pb.DESCRIPTOR.services_by_name["SeqServe"].methods}
    served |= {m.name for m in v2.methods}
    opened = {m.rsplit("/", 1)[-1] for m in auth.OPEN_METHODS}
    missing = {m for m in served - auth.SCOPE_OF.keys() - opened if "Memory" not in m}
    assert missing <= {"TraceSetting", "LogSettings"}, missing
