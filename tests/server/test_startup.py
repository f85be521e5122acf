"""Startup: the libraries Keras imports only for features a server never uses stay unimported
while the server imports Keras, and import normally afterwards (cli.lean_imports)."""

from __future__ import annotations

import subprocess
import sys

from seqserve_server.cli import OPTIONAL_FOR_KERAS

# In a fresh process: this test process has imported them already (through Keras).
CHECK = """
import importlib, importlib.util, sys
from seqserve_server.cli import OPTIONAL_FOR_KERAS, lean_imports
with lean_imports():
    for name in OPTIONAL_FOR_KERAS:
        try:
            importlib.import_module(name)
        except ImportError:
            print("hidden", name)
for name in OPTIONAL_FOR_KERAS:
    assert name not in sys.modules
    if importlib.util.find_spec(name) is not None:  # importable again where installed
        print("importable", name)
"""


def test_lean_imports_hide_optional_libraries_only_while_keras_is_imported() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split("\n")
    for name in OPTIONAL_FOR_KERAS:
        assert f"hidden {name}" in out
    assert any(line.startswith("importable") for line in out)  # the dev venv has them
