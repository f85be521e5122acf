"""Served outputs equal the in-process Keras outputs, for every mode, unary and streaming."""

from __future__ import annotations

import numpy as np
import pytest

from seqserve_client import SeqServeClient
from tests.support.model_zoo import FEATURES, random_sequences

TOLERANCE = 1e-5


def in_process(model, x: np.ndarray) -> np.ndarray:
    return model(x, training=False).numpy()


def vectors(rng: np.random.Generator, n: int, width: int = 4) -> np.ndarray:
    return rng.normal(size=(n, width)).astype(np.float32)


@pytest.mark.parametrize("name", ["iris_like", "generator"])
def test_vector_input_modes(client: SeqServeClient, reference, name: str) -> None:
    x = vectors(np.random.default_rng(1), 5)
    served = client.predict(name, x)
    np.testing.assert_allclose(served, in_process(reference(name), x), atol=TOLERANCE)


@pytest.mark.parametrize(
    "name",
    [
        "classifier",
        "aligned",
        "enc_dec",
        "gru",
        "simple_rnn",
        "stacked",
        "stacked_bi",
        "conv",
        "masked",
    ],
)
def test_sequence_modes_with_variable_lengths(client: SeqServeClient, reference, name: str) -> None:
    lengths = [7, 3, 7, 12, 1]
    inputs = random_sequences(np.random.default_rng(2), lengths)
    served = client.predict(name, inputs)
    model = reference(name)
    outputs = served if isinstance(served, list) else list(served)
    assert len(outputs) == len(lengths)
    for x, y in zip(inputs, outputs, strict=True):
        np.testing.assert_allclose(y, in_process(model, x[np.newaxis])[0], atol=TOLERANCE)


def test_aligned_outputs_keep_each_length(client: SeqServeClient) -> None:
    inputs = random_sequences(np.random.default_rng(3), [4, 9])
    outputs = client.predict("aligned", inputs)
    assert [len(o) for o in outputs] == [4, 9]


def test_dense_batch_and_fixed_length(client: SeqServeClient, reference) -> None:
    x = np.random.default_rng(4).normal(size=(6, 10, FEATURES)).astype(np.float32)
    served = client.predict("cropped", x)
    assert served.shape == (6, 4, 1)
    np.testing.assert_allclose(served, in_process(reference("cropped"), x), atol=TOLERANCE)
    x6 = x[:, :6]
    np.testing.assert_allclose(
        client.predict("fixed", x6), in_process(reference("fixed"), x6), atol=TOLERANCE
    )


def test_versions(client: SeqServeClient, reference) -> None:
    x = random_sequences(np.random.default_rng(5), [5])
    newest = client.predict_full("aligned", x)
    assert newest.version == 2
    np.testing.assert_allclose(
        newest.outputs[0], in_process(reference("aligned", 2), x[0][None])[0], atol=TOLERANCE
    )
    first = client.predict_full("aligned", x, version=1)
    assert first.version == 1
    np.testing.assert_allclose(
        first.outputs[0], in_process(reference("aligned", 1), x[0][None])[0], atol=TOLERANCE
    )


def test_top_k_labels(client: SeqServeClient, reference) -> None:
    x = random_sequences(np.random.default_rng(6), [5, 8])
    ranked = client.classify("classifier", x, top_k=2)
    labels = ["w", "x", "y", "z"]
    for seq, pairs in zip(x, ranked, strict=True):
        probs = in_process(reference("classifier"), seq[None])[0]
        best = np.argsort(-probs)[:2]
        assert [p[0] for p in pairs] == [labels[i] for i in best]
        np.testing.assert_allclose([p[1] for p in pairs], probs[best], atol=TOLERANCE)


def test_packed_floats_for_callers_without_numpy(server, reference) -> None:
    import grpc

    from seqserve.v1 import seqserve_pb2 as pb
    from seqserve.v1 import seqserve_pb2_grpc as pb_grpc

    x = vectors(np.random.default_rng(7), 2)
    tensor = pb.Tensor(shape=[2, 4], float_values=pb.FloatValues(values=x.ravel().tolist()))
    request = pb.PredictRequest(model_name="iris_like", inputs=pb.Batch(values=tensor))
    with grpc.insecure_channel(server.target) as channel:
        response = pb_grpc.SeqServeStub(channel).Predict(request, timeout=30)
    assert response.mode == pb.ONE_TO_ONE
    served = np.frombuffer(response.vectors.values.raw, dtype="<f4").reshape(2, 3)
    np.testing.assert_allclose(served, in_process(reference("iris_like"), x), atol=TOLERANCE)


@pytest.mark.parametrize("name", ["aligned", "enc_dec", "generator", "classifier"])
def test_stream_equals_unary(client: SeqServeClient, name: str) -> None:
    rng = np.random.default_rng(8)
    inputs = vectors(rng, 3) if name == "generator" else random_sequences(rng, [6, 2, 9])
    unary = client.predict(name, inputs)
    parts = list(client.predict_stream(name, inputs))
    by_input: dict[int, list] = {}
    for part in parts:
        by_input.setdefault(part.input_index, []).append(part)
    assert sorted(by_input) == [0, 1, 2]
    for index, steps in by_input.items():
        assert [p.step for p in steps] == list(range(len(steps)))
        assert steps[-1].last and not any(p.last for p in steps[:-1])
        expected = np.asarray(unary[index])
        got = np.stack([p.values for p in steps])
        np.testing.assert_allclose(got.reshape(expected.shape), expected, atol=TOLERANCE)


def test_stream_sends_first_parts_before_the_rest(client: SeqServeClient) -> None:
    """Inputs are computed a few at a time: the first part arrives while later ones are pending."""
    inputs = random_sequences(np.random.default_rng(9), [20] * 40)
    stream = client.predict_stream("aligned", inputs)
    first = next(stream)
    assert first.input_index == 0 and first.step == 0
    rest = list(stream)
    assert len(rest) == 40 * 20 - 1


def test_stream_top_k(client: SeqServeClient) -> None:
    x = random_sequences(np.random.default_rng(10), [4])
    parts = list(client.predict_stream("classifier", x, top_k=3))
    assert len(parts) == 1 and len(parts[0].top_k) == 3
    assert parts[0].top_k == client.classify("classifier", x, top_k=3)[0]


@pytest.mark.parametrize("name", ["gru", "stacked", "stacked_bi"])
def test_long_sequences_stream_window_by_window(client: SeqServeClient, name: str) -> None:
    """Steppable aligned models stream a long sequence as its windows are computed; the
    others (stacked_bi recomputes) as whole sequences: both equal the unary outputs."""
    inputs = random_sequences(np.random.default_rng(11), [70, 5, 70, 40])
    unary = client.predict(name, inputs)
    by_input: dict[int, list] = {}
    for part in client.predict_stream(name, inputs):
        by_input.setdefault(part.input_index, []).append(part)
    assert sorted(by_input) == [0, 1, 2, 3]
    for index, parts in by_input.items():
        assert [p.step for p in parts] == list(range(len(inputs[index])))
        assert [p.last for p in parts] == [False] * (len(parts) - 1) + [True]
        got = np.stack([p.values for p in parts])
        np.testing.assert_allclose(got, unary[index], atol=TOLERANCE)
