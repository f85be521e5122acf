"""Generate the Python code and typed stubs for protos/ into the API package (protos/python).

`python protos/generate.py` rewrites the committed files; `--check` exits 1 when they are stale.
The generated modules import as `seqserve.v1.*` (the proto package), as `google.rpc` does.
`seqserve.inference` (Triton's protocol, re-packaged: see protos/seqserve/inference/vendor.py)
gets messages only: the server serves it under its wire name `inference.GRPCInferenceService`,
and clients use tritonclient's own stubs.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = PROTO_ROOT / "python"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
MESSAGES_ONLY = PROTO_ROOT / "seqserve" / "inference"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "seqserve").rglob("*.proto"))


def generate(out: Path) -> None:
    files = proto_files()
    _protoc(out, [p for p in files if not p.is_relative_to(MESSAGES_ONLY)], stubs=True)
    _protoc(out, [p for p in files if p.is_relative_to(MESSAGES_ONLY)], stubs=False)


def _protoc(out: Path, files: list[Path], stubs: bool) -> None:
    include = str(Path(protoc.__file__).parent / "_proto")
    bin_dir = Path(sys.executable).parent
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--mypy_out={out}",
    ]
    if stubs:
        args += [
            f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
            f"--grpc_python_out={out}",
            f"--mypy_grpc_out={out}",
        ]
    if protoc.main([*args, *[str(p) for p in files]]) != 0:
        raise SystemExit("protoc failed")


def generated_files(root: Path) -> set[Path]:
    return {
        p.relative_to(root)
        for p in root.rglob("*")
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    }


def stale_files() -> list[str]:
    """Names of the committed generated files that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = Path(tmp)
        generate(fresh_root)
        fresh = generated_files(fresh_root)
        committed = generated_files(OUT_ROOT)
        stale = sorted(str(p) for p in fresh ^ committed)
        stale += sorted(
            str(p)
            for p in fresh & committed
            if not filecmp.cmp(fresh_root / p, OUT_ROOT / p, shallow=False)
        )
        return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    if parser.parse_args().check:
        stale = stale_files()
        if stale:
            print("stale generated code, run `make proto`:", *stale, sep="\n  ")
            return 1
        return 0
    generate(OUT_ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
