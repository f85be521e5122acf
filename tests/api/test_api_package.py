"""The API package seqserve-api: generated code in step with the proto, and the package
boundaries it exists for (the SDK needs no TensorFlow; the server needs the API, not the SDK)."""

from __future__ import annotations

import subprocess
import sys


def test_generated_code_is_fresh() -> None:
    result = subprocess.run(
        [sys.executable, "protos/generate.py", "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_client_imports_without_tensorflow() -> None:
    code = (
        "import sys, seqserve_client, seqserve_api.tensors; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _requirements(distribution: str) -> set[str]:
    from importlib.metadata import requires

    return {r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip()
            for r in requires(distribution) or [] if "extra ==" not in r}  # fmt: skip


def test_client_package_does_not_depend_on_tensorflow() -> None:
    client, api = _requirements("seqserve-client"), _requirements("seqserve-api")
    assert "seqserve-api" in client and {"grpcio", "protobuf", "numpy"} <= api
    assert not (client | api) & {"tensorflow", "tensorflow-cpu", "keras"}


def test_server_depends_on_the_api_package_not_on_the_sdk() -> None:
    assert "seqserve-api" in _requirements("seqserve-server")
    assert "seqserve-client" not in _requirements("seqserve-server")
