"""Labels per output: a model with several heads names each classification head's labels
(`labels: {output: [...]}`), and top-k ranks each labelled head, in Predict, PredictStream,
sessions and the Open Inference Protocol; a config that does not fit its outputs fails the load
naming why. Rankings are checked against the eager Keras model's outputs."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest
import tritonclient.grpc as triton
import yaml
from tritonclient.utils import InferenceServerException

from seqserve_client import SeqServeClient
from seqserve_client.errors import InvalidInputError
from tests.support.model_zoo import FEATURES, save_zoo
from tests.support.reference import loader
from tests.support.server_process import ServerProcess, served, v2_client

HEAD = ["cat", "dog", "eel"]  # two_heads' "label": Dense(3, softmax)
TAGS = ["out", "in"]  # two_heads_aligned's "tag": Dense(2, softmax)
CONFIGS = {
    "two_heads": {"labels": {"label": HEAD}},
    "two_heads_aligned": {"labels": {"tag": TAGS}},
}
BAD_CONFIGS = {  # model copied under a new name -> its config, and the words of the load error
    "list_for_two_heads": ("two_heads", {"labels": HEAD}, "name each labelled output"),
    "unknown_output": ("two_heads", {"labels": {"kind": HEAD}}, "output 'kind'"),
    "wrong_count": ("two_heads", {"labels": {"label": HEAD[:2]}}, "2 labels for output 'label'"),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = save_zoo(tmp_path_factory.mktemp("labels"), CONFIGS)
    for name, config in CONFIGS.items():
        (root / name / "config.yaml").write_text(yaml.safe_dump(config))
    for name, (model, config, _) in BAD_CONFIGS.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.keras").write_bytes(
            (root / model / "1" / "model.keras").read_bytes()
        )
        (root / name / "config.yaml").write_text(yaml.safe_dump(config))
    return root


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[ServerProcess]:
    with served(root) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[SeqServeClient]:
    with SeqServeClient(server.target, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def eager(root: Path) -> functools._lru_cache_wrapper:
    return loader(root)


def _best(scores: np.ndarray, labels: list[str], k: int) -> list[list[str]]:
    """Each row's k best labels, best first."""
    rows = scores.reshape(-1, scores.shape[-1])
    return [[labels[i] for i in np.argsort(-row, kind="stable")[:k]] for row in rows]


def _keras(model: keras.Model, x: np.ndarray) -> dict[str, np.ndarray]:
    out = model(x, training=False)
    if not isinstance(out, dict):
        out = dict(zip(model.output_names, out, strict=True))
    return {name: keras.ops.convert_to_numpy(v) for name, v in out.items()}


def test_metadata_lists_each_outputs_labels(client: SeqServeClient) -> None:
    meta = client.metadata("two_heads")
    assert {s.name: s.labels for s in meta.outputs} == {"label": tuple(HEAD), "value": ()}
    assert meta.labels == ()


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_labels_that_do_not_fit_the_outputs_fail_the_load(
    client: SeqServeClient, name: str
) -> None:
    status = {s.name: s for s in client.list_models()}[name]
    assert status.state == "failed" and BAD_CONFIGS[name][2] in status.error, status


def test_predict_ranks_each_labelled_head(
    client: SeqServeClient, eager: functools._lru_cache_wrapper
) -> None:
    x = np.random.default_rng(1).normal(size=(3, 5, FEATURES)).astype(np.float32)
    want = _keras(eager("two_heads"), x)
    ranked = client.classify("two_heads", x, top_k=2)
    assert set(ranked) == {"label"}  # "value" has no labels
    assert [[label for label, _ in row] for row in ranked["label"]] == _best(want["label"], HEAD, 2)
    scores = [[score for _, score in row] for row in ranked["label"]]
    np.testing.assert_allclose(scores, -np.sort(-want["label"], axis=-1)[:, :2], atol=1e-5)
    parts = list(client.predict_stream("two_heads", x, top_k=2))
    assert {p.output_name for p in parts if p.top_k} == {"label"}
    for part in (p for p in parts if p.output_name == "label"):
        assert [label for label, _ in part.top_k] == _best(want["label"], HEAD, 2)[part.input_index]


def test_top_k_is_capped_by_each_heads_labels(client: SeqServeClient) -> None:
    with pytest.raises(InvalidInputError) as caught:
        client.classify("two_heads", np.ones((1, 2, FEATURES), np.float32), top_k=4)
    assert caught.value.field == "top_k" and "at most 3" in str(caught.value)


def test_sessions_rank_each_labelled_head(
    client: SeqServeClient, eager: functools._lru_cache_wrapper
) -> None:
    x = np.random.default_rng(2).normal(size=(6, FEATURES)).astype(np.float32)
    model = eager("two_heads_aligned")
    with client.session("two_heads_aligned", top_k=1) as session:
        for start, end in ((0, 2), (2, 3), (3, 6)):
            output = session.step_full(x[start:end])
            assert output is not None and set(output.top_k) == {"tag"}
            want = _keras(model, x[np.newaxis, :end])["tag"][0, start:end]
            assert [[label for label, _ in row] for row in output.top_k["tag"]] == _best(
                want, TAGS, 1
            )
    with client.session("two_heads", top_k=3) as session:
        output = session.step_full(x[:4])
        want = _keras(eager("two_heads"), x[np.newaxis, :4])["label"]
        assert output is not None
        assert [[label for label, _ in row] for row in output.top_k["label"]] == _best(
            want, HEAD, 3
        )


def test_open_inference_classifies_each_labelled_output(
    server: ServerProcess, eager: functools._lru_cache_wrapper
) -> None:
    x = np.random.default_rng(3).normal(size=(2, 4, FEATURES)).astype(np.float32)
    want = _keras(eager("two_heads"), x)["label"]
    with v2_client(server.target) as v2:
        inp = triton.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        out = triton.InferRequestedOutput("label", class_count=2)
        result = v2.infer("two_heads", [inp], outputs=[out])
        rows = result.as_numpy("label")
        assert [[e.decode().split(":")[2] for e in row] for row in rows] == _best(want, HEAD, 2)
        with pytest.raises(InferenceServerException, match="no labels"):
            v2.infer(
                "two_heads", [inp], outputs=[triton.InferRequestedOutput("value", class_count=1)]
            )
