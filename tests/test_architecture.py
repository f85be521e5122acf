"""The import rules of ARCHITECTURE.md, read from the source trees (ast: nothing is imported).

Each rule names the files it covers, the modules they must not import and why; a violation
fails naming the file, the line and the import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {  # top-level package -> its directory
    "seqserve_api": ROOT / "protos/python/seqserve_api",
    "seqserve_client": ROOT / "client/src/seqserve_client",
    "seqserve_server": ROOT / "server/src/seqserve_server",
}
KERAS_INTERNALS = SOURCES["seqserve_server"] / "core/stepping/keras_internals.py"
GRPC_AND_PROTOBUF = ("grpc", "grpc_status", "grpc_health", "grpc_reflection", "google.protobuf",
                     "google.rpc", "seqserve")  # fmt: skip
SERVER_OUTSIDE_CORE = ("seqserve_server.transport", "seqserve_server.app", "seqserve_server.cli",
                       "seqserve_server.config", "seqserve_server.metrics",
                       "seqserve_server.workers")  # fmt: skip
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make"}  # public despite the underscore


@dataclass(frozen=True)
class Rule:
    name: str
    package: str
    under: str  # directory inside the package ("" for all of it)
    forbidden: tuple[str, ...]


RULES = [
    Rule("core imports no transport, protobuf, metrics or store client library",
         "seqserve_server", "core",
         (*GRPC_AND_PROTOBUF, "seqserve_api", "seqserve_client", "prometheus_client", "redis",
          *SERVER_OUTSIDE_CORE)),
    Rule("transport imports the core, never the SDK", "seqserve_server", "transport",
         ("seqserve_client",)),
    Rule("the server never imports the SDK", "seqserve_server", "", ("seqserve_client",)),
    Rule("the SDK imports no server, TensorFlow or Keras", "seqserve_client", "",
         ("seqserve_server", "tensorflow", "keras")),
    Rule("the API package imports neither side, nor TensorFlow or Keras", "seqserve_api", "",
         ("seqserve_server", "seqserve_client", "tensorflow", "keras")),
]  # fmt: skip


def python_files(package: str, under: str = "") -> list[Path]:
    return sorted((SOURCES[package] / under).rglob("*.py"))


def module_name(package: str, path: Path) -> str:
    parts = [package, *path.relative_to(SOURCES[package]).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(package: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module) of every import in the file, relative ones resolved; for
    `from a import b` both `a` and `a.b` (b may be a module)."""
    here = module_name(package, path).split(".")
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_package else here[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(rule: Rule) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in python_files(rule.package, rule.under)
        for line, module in imports(rule.package, path)
        if any(matches(module, prefix) for prefix in rule.forbidden)
    ]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name.replace(" ", "_"))
def test_import_rule(rule: Rule) -> None:
    assert python_files(rule.package, rule.under), f"no sources for {rule.name}"
    assert not violations(rule), f"{rule.name}:\n" + "\n".join(violations(rule))


def test_the_sdk_speaks_through_the_api_package() -> None:
    modules = {m for p in python_files("seqserve_client") for _, m in imports("seqserve_client", p)}
    assert any(matches(m, "seqserve_api") for m in modules)


def test_test_files_import_no_test_files() -> None:
    """Shared helpers live in tests/support, so moving or deleting a test breaks no other."""
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno} imports {module}"
        for path in sorted((ROOT / "tests").rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for module in _imported_names(node)
        if module.startswith("tests.") and module.rsplit(".", 1)[-1].startswith("test_")
    ]
    assert not found, "\n".join(found)


def _imported_names(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def own_private_names() -> set[str]:
    """Private names this project defines (functions, classes, attributes it assigns)."""
    names = set(NAMEDTUPLE_API)
    for package in SOURCES:
        for path in python_files(package):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    names.add(node.name)
                elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                    names.add(node.attr)
                elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    names.add(node.id)
    return {n for n in names if _is_private(n)}


def foreign_private_reads(path: Path, own: set[str]) -> Iterator[tuple[int, str]]:
    """`x._name` (x not self/cls) and `getattr(x, "_name")` for names this project does not
    define: reads of a library's internals (Keras's, in practice)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and _is_private(node.attr) and node.attr not in own:
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                yield node.lineno, node.attr
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _is_private(node.args[1].value)
            and node.args[1].value not in own
        ):
            yield node.lineno, node.args[1].value


def keras_private_uses(path: Path, package: str, own: set[str]) -> Iterator[str]:
    """Reads of private attributes and imports of `keras.src`, Keras' private module tree."""
    for line, attr in foreign_private_reads(path, own):
        yield f"{path.relative_to(ROOT)}:{line} reads {attr}"
    for line, module in imports(package, path):
        if matches(module, "keras.src"):
            yield f"{path.relative_to(ROOT)}:{line} imports {module}"


def test_only_keras_internals_uses_keras_private_parts() -> None:
    """One module to change on a Keras upgrade: core/stepping/keras_internals.py."""
    own = own_private_names()
    found = [
        use
        for package in SOURCES
        for path in python_files(package)
        if path != KERAS_INTERNALS
        for use in keras_private_uses(path, package, own)
    ]
    assert not found, "Keras internals used outside keras_internals.py:\n" + "\n".join(found)
