"""TLS, mutual TLS, tokens and certificate rotation, through real gRPC against the real server
(both protocols): certificates are made here, for this run only."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import queue
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.utils import InferenceServerException

from deploy.make_certs import Authority, Issued
from seqserve_client import (
    ModelNotFoundError,
    PermissionDeniedError,
    SeqServeClient,
    UnauthenticatedError,
    UnavailableError,
)
from seqserve_client.calls import predict_request
from tests.fuzz.run import FuzzConfig, fuzz
from tests.support.metrics import value
from tests.support.model_zoo import FEATURES
from tests.support.reference import loader
from tests.support.server_process import ServerProcess, served

QUICK = 10.0  # seconds: a refused handshake fails at once; retries fit well inside
TOKENS = {  # name: (token, models, scopes)
    "full": ("tok-full", ["*"], ["infer", "read"]),
    "reader": ("tok-reader", ["aligned"], ["read"]),
    "other": ("tok-other", ["elsewhere-*"], ["infer", "read"]),
    "revoked": ("tok-revoked", ["*"], ["infer", "read"]),
    "metered": ("tok-metered", ["*"], ["infer", "read"]),
}
SHARES = {"metered": {"rate": 2, "weight": 0.5}}  # the front door's per-token caps


def write_tokens(path: Path, names: list[str]) -> None:
    entries = [
        {
            "name": name,
            "sha256": hashlib.sha256(TOKENS[name][0].encode()).hexdigest(),
            "models": TOKENS[name][1],
            "scopes": TOKENS[name][2],
            **SHARES.get(name, {}),
        }
        for name in names
    ]
    path.write_text(yaml.safe_dump({"tokens": entries}))


class Pki:
    """The CAs and files of one test module."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca, self.untrusted = Authority("test CA"), Authority("untrusted CA")
        self.ca_file = directory / "ca.crt"
        self.ca_file.write_bytes(self.ca.pem)
        self.server_cert, self.server_key = self.ca.server().write(directory, "server")
        self.client = self.ca.client("caller")
        self.client_cert, self.client_key = self.client.write(directory, "client")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tokens_file(pki: Pki) -> Path:
    path = pki.dir / "tokens.yaml"
    write_tokens(path, list(TOKENS))
    return path


@pytest.fixture(scope="module")
def secured(small_repository: Path, pki: Pki, tokens_file: Path) -> Iterator[ServerProcess]:
    """Mutual TLS and tokens."""
    with served(
        small_repository,
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        "--tls-client-ca", str(pki.ca_file), "--auth-tokens-file", str(tokens_file),
        "--metrics-host", "127.0.0.1",
        "--metrics-tls-cert", str(pki.server_cert), "--metrics-tls-key", str(pki.server_key),
        "--metrics-tls-client-ca", str(pki.ca_file),
    ) as process:  # fmt: skip
        yield process


def client(server: ServerProcess, pki: Pki, token: str | None = None, **kw: Any) -> SeqServeClient:
    """A caller with the module CA's trust and client certificate unless `kw` says otherwise."""
    settings: dict[str, Any] = {
        "root_certificates": pki.ca.pem,
        "client_certificate": pki.client.cert,
        "client_key": pki.client.key,
        "token": token,
        "timeout": QUICK,
        **kw,
    }
    return SeqServeClient(f"localhost:{server.port}", tls=True, **settings)


def x() -> list[np.ndarray]:
    return [np.linspace(-1, 1, 5 * FEATURES, dtype=np.float32).reshape(5, FEATURES)]


def test_tls_with_client_certificate_and_token_serves_keras_numbers(
    secured: ServerProcess, pki: Pki, small_repository: Path
) -> None:
    with client(secured, pki, "tok-full") as c:
        served_output = c.predict("aligned", x())
    expected = loader(small_repository)("aligned")(np.stack(x()), training=False)
    np.testing.assert_allclose(served_output, np.asarray(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "how",
    ["plaintext", "server cert from another CA", "no client cert", "untrusted client cert"],
)
def test_connections_the_server_or_caller_must_not_trust_fail(
    secured: ServerProcess, pki: Pki, how: str
) -> None:
    stranger = pki.untrusted.client("stranger")
    kw: dict[str, Any] = {
        "plaintext": {},
        "server cert from another CA": {"root_certificates": pki.untrusted.pem},
        "no client cert": {"client_certificate": None, "client_key": None},
        "untrusted client cert": {"client_certificate": stranger.cert, "client_key": stranger.key},
    }[how]
    if how == "plaintext":
        caller = SeqServeClient(secured.target, timeout=QUICK)
    else:
        caller = client(secured, pki, "tok-full", **kw)
    with caller, pytest.raises(UnavailableError):
        caller.predict("aligned", x())


@pytest.mark.parametrize("token", [None, "tok-wrong"])
def test_a_missing_or_unknown_token_is_unauthenticated(
    secured: ServerProcess, pki: Pki, token: str | None
) -> None:
    with client(secured, pki, token) as c:
        for call in (lambda: c.predict("aligned", x()), c.list_models):
            with pytest.raises(UnauthenticatedError):
                call()
        with pytest.raises(UnauthenticatedError), c.session("aligned") as s:
            s.step(x()[0])


def test_health_and_reflection_need_no_token(secured: ServerProcess, pki: Pki) -> None:
    with client(secured, pki) as c:
        assert c.health()
        # No model-name oracle: per-model health, open to anyone, answers a real model and a
        # made-up one alike when tokens are on (readiness: v2 ModelReady, with a token).
        answers = []
        for model in ("aligned", "no-such-model"):
            with pytest.raises(ModelNotFoundError) as refused:
                c.health(model)
            answers.append(refused.value.message.replace(model, "<model>"))
        assert answers[0] == answers[1]
    credentials = grpc.ssl_channel_credentials(pki.ca.pem, pki.client.key, pki.client.cert)
    with grpc.secure_channel(f"localhost:{secured.port}", credentials) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = stub.ServerReflectionInfo(iter([request]), timeout=QUICK)
    names = {s.name for s in answer.list_services_response.service}
    assert {"seqserve.v1.SeqServe", "inference.GRPCInferenceService"} <= names


def test_a_token_without_the_scope_is_denied(secured: ServerProcess, pki: Pki) -> None:
    with client(secured, pki, "tok-reader") as c:
        assert c.metadata("aligned").name == "aligned"
        with pytest.raises(PermissionDeniedError, match="infer"):
            c.predict("aligned", x())
        with pytest.raises(PermissionDeniedError), c.session("aligned") as s:
            s.step(x()[0])


def test_unknown_and_forbidden_models_get_the_same_answer(secured: ServerProcess, pki: Pki) -> None:
    """A caller learns nothing of models outside its grant, not even whether they exist."""
    answers: dict[str, list[tuple[Any, str]]] = {}
    with client(secured, pki, "tok-other") as c:
        assert c.list_models() == []  # the listing shows only its grant's models
        for model in ("aligned", "no-such-model"):
            calls: list[Callable[[], Any]] = [
                lambda m=model: c.predict(m, x()),
                lambda m=model: c.metadata(m),
                lambda m=model: list(c.predict_stream(m, x())),
            ]
            answers[model] = []
            for call in calls:
                with pytest.raises(PermissionDeniedError) as refused:
                    call()
                answers[model].append(
                    (refused.value.code, refused.value.message.replace(model, "<model>"))
                )
    assert answers["aligned"] == answers["no-such-model"]
    with client(secured, pki, "tok-full") as c:
        assert [m.name for m in c.list_models()] == ["aligned"]


def test_a_narrow_token_learns_no_model_name_outside_its_scope(
    secured: ServerProcess, pki: Pki
) -> None:
    """A name inside the token's globs that does not exist is NOT_FOUND listing only models
    the token covers; an empty name is checked like any other; a huge name is cut in the answer."""
    others = ["aligned"]  # in the repository, outside "elsewhere-*"
    with client(secured, pki, "tok-other") as c:
        for call in (lambda: c.predict("elsewhere-x", x()), lambda: c.metadata("elsewhere-x")):
            with pytest.raises(ModelNotFoundError) as missing:
                call()
            assert not any(name in missing.value.message for name in others)
        with pytest.raises(PermissionDeniedError):
            c.predict("", x())
        with pytest.raises(PermissionDeniedError) as huge:
            c.predict("m" * 5000, x())
        assert len(huge.value.message) < 400 and "5,000 characters" in huge.value.message


def test_a_token_removed_from_the_file_is_refused_after_reload(
    secured: ServerProcess, pki: Pki, tokens_file: Path
) -> None:
    with client(secured, pki, "tok-revoked") as c:
        c.predict("aligned", x())
        write_tokens(tokens_file, [n for n in TOKENS if n != "revoked"])
        os.utime(tokens_file, ns=(time.time_ns() + 10**9,) * 2)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # the server looks again within a second
            try:
                c.predict("aligned", x())
            except UnauthenticatedError:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the removed token was still accepted after 15 s")
    with client(secured, pki, "tok-full") as c:
        c.predict("aligned", x())


def test_a_flood_of_wrong_tokens_does_not_flood_the_log(secured: ServerProcess, pki: Pki) -> None:
    """Refusals are logged at most once per 10 s (with a count of the rest), never per attempt."""

    def refusal_lines() -> int:
        lines = secured.output().splitlines()
        return sum("WARNING" in line and "refused" in line for line in lines)

    before = refusal_lines()
    credentials = grpc.ssl_channel_credentials(pki.ca.pem, pki.client.key, pki.client.cert)
    request = predict_request("aligned", x(), 0, 0)
    with grpc.secure_channel(f"localhost:{secured.port}", credentials) as channel:
        predict = channel.unary_unary(
            "/seqserve.v1.SeqServe/Predict", request_serializer=lambda m: m.SerializeToString()
        )
        for i in range(200):
            with pytest.raises(grpc.RpcError) as refused:
                predict(request, metadata=(("authorization", f"Bearer wrong-{i}"),), timeout=QUICK)
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    time.sleep(0.5)  # the server's log reaches the pipe
    assert refusal_lines() - before <= 1
    assert "wrong-" not in secured.output()


def test_metrics_over_tls_count_callers_by_token_name_only(
    secured: ServerProcess, pki: Pki
) -> None:
    with client(secured, pki, "tok-full") as c:
        c.predict("aligned", x())
    with client(secured, pki, "tok-wrong") as c, pytest.raises(UnauthenticatedError):
        c.predict("aligned", x())
    url = f"https://localhost:{secured.metrics_port}/metrics"
    with pytest.raises(OSError):  # plain HTTP to the TLS port
        urllib.request.urlopen(url.replace("https", "http", 1), timeout=QUICK)
    trusting = ssl.create_default_context(cafile=str(pki.ca_file))
    with pytest.raises(OSError):  # mutual TLS: a scraper without a certificate is refused
        urllib.request.urlopen(url, timeout=QUICK, context=trusting).read()
    trusting.load_cert_chain(pki.client_cert, pki.client_key)
    with urllib.request.urlopen(url, timeout=QUICK, context=trusting) as response:
        text = response.read().decode()
    assert value(text, "seqserve_auth_checks_total", caller="full", outcome="allowed") >= 1
    assert value(text, "seqserve_auth_checks_total", caller="", outcome="unauthenticated") >= 1
    assert not any(token in text for token, _, _ in TOKENS.values())
    assert "tok-wrong" not in text and "tok-wrong" not in secured.output()
    assert not any(token in secured.output() for token, _, _ in TOKENS.values())


def test_a_token_over_its_rate_is_refused_with_pushback_and_the_sdk_waits_it_out(
    secured: ServerProcess, pki: Pki
) -> None:
    """`rate: 2` in the tokens file: a third call within the second is refused at once with
    RESOURCE_EXHAUSTED, reason RATE_LIMITED and `grpc-retry-pushback-ms`; the SDK waits that
    long and succeeds; another token is not slowed."""
    credentials = grpc.ssl_channel_credentials(pki.ca.pem, pki.client.key, pki.client.cert)
    request = predict_request("aligned", x(), 0, 0)
    metered = (("authorization", "Bearer tok-metered"),)
    with grpc.secure_channel(f"localhost:{secured.port}", credentials) as channel:
        predict = channel.unary_unary(
            "/seqserve.v1.SeqServe/Predict", request_serializer=lambda m: m.SerializeToString()
        )
        codes = []
        for _ in range(4):
            try:
                predict(request, metadata=metered, timeout=QUICK)
                codes.append("OK")
            except grpc.RpcError as exc:
                codes.append(exc.code().name)
                refused = exc
    assert codes.count("OK") <= 2 and "RESOURCE_EXHAUSTED" in codes, codes
    trailers = dict(refused.trailing_metadata() or ())
    assert 1 <= int(trailers["grpc-retry-pushback-ms"]) <= 1000
    assert "over its rate of 2 calls per second" in refused.details()
    with client(secured, pki, "tok-full") as c:
        begin = time.monotonic()
        for _ in range(10):
            c.predict("aligned", x())
        assert time.monotonic() - begin < 5  # not held behind the metered token
    with client(secured, pki, "tok-metered") as c:
        begin = time.monotonic()
        for _ in range(4):
            c.predict("aligned", x())  # refused ones are retried after the pushback
        assert time.monotonic() - begin >= 1.0  # two calls a second, no faster


# -- the Open Inference Protocol through the same gate -------------------------------------------


def v2_client(server: ServerProcess, pki: Pki) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(
        f"localhost:{server.port}",
        ssl=True,
        root_certificates=str(pki.ca_file),
        private_key=str(pki.client_key),
        certificate_chain=str(pki.client_cert),
    )


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def v2_status(call: Callable[[], Any]) -> str:
    with pytest.raises(InferenceServerException) as refused:
        call()
    return str(refused.value.status())


def test_v2_checks_the_same_tokens(
    secured: ServerProcess, pki: Pki, small_repository: Path
) -> None:
    v2 = v2_client(secured, pki)
    try:
        assert v2.is_server_live()  # probes need no token
        full = bearer("tok-full")
        name = v2.get_model_metadata("aligned", headers=full).inputs[0].name
        tensor = triton.InferInput(name, [1, 5, FEATURES], "FP32")
        tensor.set_data_from_numpy(np.stack(x()))
        result = v2.infer("aligned", [tensor], headers=full)
        expected = loader(small_repository)("aligned")(np.stack(x()), training=False)
        output = result.as_numpy(result.get_response().outputs[0].name)
        np.testing.assert_allclose(output, np.asarray(expected), rtol=1e-5, atol=1e-6)
        assert "UNAUTHENTICATED" in v2_status(lambda: v2.infer("aligned", [tensor]))
        wrong = bearer("tok-wrong")
        assert "UNAUTHENTICATED" in v2_status(lambda: v2.is_model_ready("aligned", headers=wrong))
        reader = bearer("tok-reader")
        assert "PERMISSION_DENIED" in v2_status(
            lambda: v2.infer("aligned", [tensor], headers=reader)
        )
        other = bearer("tok-other")
        known = v2_status(lambda: v2.get_model_metadata("aligned", headers=other))
        unknown = v2_status(lambda: v2.get_model_metadata("no-such-model", headers=other))
        assert known == unknown == "StatusCode.PERMISSION_DENIED"
        assert v2_stream(v2, tensor, full)[1] is None
        error = v2_stream(v2, tensor, reader)[1]
        assert error is not None and "PERMISSION_DENIED" in str(error.status())
        assert v2.get_model_repository_index(headers=other).models == []
        assert [m.name for m in v2.get_model_repository_index(headers=full).models] == ["aligned"]
    finally:
        v2.close()


def v2_stream(
    v2: triton.InferenceServerClient, tensor: triton.InferInput, headers: dict[str, str]
) -> tuple[Any, Any]:
    """ModelStreamInfer's first answer: (result, None) or (None, error)."""
    received: queue.Queue[tuple[Any, Any]] = queue.Queue()
    v2.start_stream(callback=lambda result, error: received.put((result, error)), headers=headers)
    try:
        # Refused before the first message (the scope): the callback has the error.
        with contextlib.suppress(InferenceServerException):
            v2.async_stream_infer("aligned", [tensor])
        return received.get(timeout=QUICK)
    finally:
        v2.stop_stream()


# -- certificate rotation -------------------------------------------------------------------------


@pytest.fixture
def rotating(small_repository: Path, tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    """TLS only (no client certificate, no tokens), with certificate files the test replaces."""
    ca = Authority("first CA")
    (tmp_path / "ca.crt").write_bytes(ca.pem)
    cert, key = ca.server().write(tmp_path, "server")
    with served(small_repository, "--tls-cert", str(cert), "--tls-key", str(key)) as process:
        yield process, tmp_path


def replace(issued: Issued, directory: Path) -> None:
    """As a deployment does it: new files moved into place (atomic renames), key first."""
    staged_cert, staged_key = issued.write(directory, "staged")
    os.replace(staged_key, directory / "server.key")
    os.replace(staged_cert, directory / "server.crt")


def test_rotating_the_certificate_keeps_an_open_session_working(
    rotating: tuple[ServerProcess, Path],
) -> None:
    server, directory = rotating
    first_ca = (directory / "ca.crt").read_bytes()
    target = f"localhost:{server.port}"
    old = SeqServeClient(target, tls=True, root_certificates=first_ca, timeout=QUICK)
    with old, old.session("aligned") as session:
        before = session.step(x()[0])
        second = Authority("second CA")
        replace(second.server(), directory)
        # New connections get the new certificate: a caller trusting only the new CA.
        with SeqServeClient(target, tls=True, root_certificates=second.pem, timeout=QUICK) as new:
            assert new.predict("aligned", x()).shape == (1, 5, 2)
        after = session.step(x()[0])  # the session's connection kept its certificate
        assert before is not None and after is not None
        assert after.shape == before.shape


# -- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [
        ["--tls-cert", "server.crt"],
        ["--tls-key", "server.key"],
        ["--tls-client-ca", "ca.crt"],
        ["--metrics-tls-cert", "server.crt"],
    ],
)
def test_half_a_tls_configuration_is_refused_not_served_plaintext(flags: list[str]) -> None:
    from pydantic import ValidationError
    from pydantic_settings import CliApp

    from seqserve_server.config import Settings

    with pytest.raises(ValidationError, match=r"go together|needs --tls-cert"):
        CliApp.run(Settings, cli_args=flags)


def test_reflection_can_be_closed(small_repository: Path) -> None:
    closed = served(small_repository, "--reflection", "false")
    with closed as process, grpc.insecure_channel(process.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.ServerReflectionInfo(iter([request]), timeout=QUICK))
        health = health_pb2_grpc.HealthStub(channel)
        serving = health.Check(health_pb2.HealthCheckRequest(), timeout=QUICK).status
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert serving == health_pb2.HealthCheckResponse.SERVING


def test_the_fuzzer_finds_no_internal_error_behind_tls_and_a_token(
    secured: ServerProcess, pki: Pki, small_repository: Path
) -> None:
    """The hardening fuzzer's cases, sent with mutual TLS and a token that may call every model:
    authorization wraps every handler, so it must not open a path to INTERNAL/UNKNOWN."""
    channel = grpc.ssl_channel_credentials(pki.ca.pem, pki.client.key, pki.client.cert)
    token = grpc.access_token_call_credentials(TOKENS["full"][0])
    credentials = grpc.composite_channel_credentials(channel, token)
    config = FuzzConfig(cases=200, seed=20261130, rss_growth_limit=0.25)
    target, pid = f"localhost:{secured.port}", secured.process.pid
    report = asyncio.run(fuzz(target, pid, small_repository, config, credentials=credentials))
    print(report.summary())
    assert not report.problems(), "\n".join(report.problems())
    codes = [code for counts in report.codes.values() for code in counts.elements()]
    assert "OK" in codes and "UNAUTHENTICATED" not in codes, "the token got the cases through"
