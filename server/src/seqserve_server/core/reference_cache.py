"""Eager Keras outputs of the load-time proof, kept on disk between starts.

The proof's expensive half is the reference: `model(x, training=False)` on every probe, eagerly
(~60% of loading the bundled models). What Keras computes for a probe depends only on the model
file, the probe and the software and CPU computing it, so those outputs are stored under a key of
all of them: the SHA-256 of the model file; the versions of Python, TensorFlow, Keras and numpy,
and seqserve's own core code; the machine, its CPU's model and flags and TensorFlow's oneDNN
switch; and, per entry, the digest of the probe's arrays. The compiled path is still traced and
compared with those outputs at every start: only Keras' side of the comparison is remembered,
never a verdict.

An entry carries a checksum of its key and content; one that is unreadable, truncated or does not
match is a miss (computed again and rewritten). A directory that cannot be written (read-only
file system, no home) turns writing off with one warning: the server loads as without a cache.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import importlib
import io
import logging
import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FORMAT = "seqserve-reference-1"  # bump when what an entry means changes


def default_dir() -> str:
    """`$XDG_CACHE_HOME/seqserve/references`, else `~/.cache/seqserve/references`; '' (no
    cache) for a user without a home directory, never a directory relative to where it runs."""
    home = os.path.expanduser("~")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    return str(Path(base) / "seqserve" / "references") if os.path.isabs(base) else ""


class ReferenceCache:
    """A directory of eager outputs, one subdirectory per model key. Thread-safe: entries are
    written to a temporary file and renamed into place, and nothing else is shared."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.writable = True
        self.hits = 0
        self.misses = 0
        self._environment: str | None = None

    def for_model(self, model_file: Path) -> ModelReferences:
        digest = hashlib.sha256()
        digest.update(self.environment().encode())
        digest.update(file_sha256(model_file).encode())
        return ModelReferences(self, self.directory / digest.hexdigest()[:40])

    def environment(self) -> str:
        """Everything besides the model and the probe that decides what Keras computes."""
        if self._environment is None:
            parts = [
                FORMAT,
                sys.version,
                platform.machine(),
                _cpu(),
                os.environ.get("TF_ENABLE_ONEDNN_OPTS", ""),
                *(_version(m) for m in ("tensorflow", "keras", "numpy")),
                _source_digest(),
            ]
            self._environment = "\n".join(parts)
        return self._environment

    def disable_writes(self, why: OSError) -> None:
        if self.writable:
            log.warning("proof reference cache %s not written: %s", self.directory, why)
        self.writable = False


class ModelReferences:
    """The stored eager outputs of one model file."""

    def __init__(self, cache: ReferenceCache, directory: Path) -> None:
        self._cache = cache
        self._directory = directory

    def get(self, key: str) -> np.ndarray | None:
        """The stored output for the probe digest `key`; None when absent or in doubt."""
        try:
            with np.load(self._directory / f"{key}.npz", allow_pickle=False) as entry:
                output = np.asarray(entry["output"])
                check = str(entry["check"])
        except Exception:  # noqa: BLE001 - absent, unreadable or corrupt: computed again
            self._cache.misses += 1
            return None
        if check != _check(self._directory.name, key, output):
            self._cache.misses += 1
            return None
        self._cache.hits += 1
        return output

    def put(self, key: str, output: np.ndarray) -> None:
        if not self._cache.writable or output.dtype.hasobject:
            return  # string outputs are computed again (the store reads no pickles)
        buffer = io.BytesIO()
        np.savez(buffer, output=output, check=np.str_(_check(self._directory.name, key, output)))
        path = self._directory / f"{key}.npz"
        temporary = path.with_name(f".{key}.{os.getpid()}.{id(buffer)}.tmp")
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
            temporary.write_bytes(buffer.getvalue())
            temporary.replace(path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            self._cache.disable_writes(exc)


_current: contextvars.ContextVar[ModelReferences | None] = contextvars.ContextVar(
    "seqserve_model_references", default=None
)


@contextlib.contextmanager
def stored_references(cache: ReferenceCache | None, model_file: Path) -> Iterator[None]:
    """While a model loads, the proof's references (`proof.Reference`) made in this thread read
    and write `cache` for `model_file`; with no cache (or an unreadable file), nothing."""
    try:
        references = cache.for_model(model_file) if cache is not None else None
    except OSError:
        references = None
    token = _current.set(references)
    try:
        yield
    finally:
        _current.reset(token)


def current() -> ModelReferences | None:
    return _current.get()


def probe_key(arrays: tuple[np.ndarray, ...]) -> str:
    """A digest of the probe's arrays: dtype, shape and bytes of each."""
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(_content(a))
    return digest.hexdigest()[:40]


def _content(a: np.ndarray) -> bytes:
    """An array's values as bytes; strings (object arrays) by their own bytes, each after its
    length, not by the pointers an object array holds."""
    if not a.dtype.hasobject:
        return np.ascontiguousarray(a).tobytes()
    parts = []
    for item in a.reshape(-1).tolist():
        data = item if isinstance(item, bytes) else str(item).encode("utf-8", "surrogatepass")
        parts += [len(data).to_bytes(8, "little"), data]
    return b"".join(parts)


def _check(model_key: str, key: str, output: np.ndarray) -> str:
    digest = hashlib.sha256(f"{model_key}/{key}/{output.dtype.str}{output.shape}".encode())
    digest.update(np.ascontiguousarray(output).tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """The SHA-256 (hex) of a file, read a MiB at a time: what names a model file's content
    (here, and in the resume tokens that bind a session to it)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version(module: str) -> str:
    return f"{module} {getattr(importlib.import_module(module), '__version__', '?')}"


def _source_digest() -> str:
    """seqserve's own version, as its code: how the eager call is made (inputs, outputs packed)
    lives in core/, and an editable install keeps its version number while the code changes."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return "seqserve " + digest.hexdigest()


def _cpu() -> str:
    """The CPU's model name and flags (kernels differ by instruction set)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = ("model name", "flags", "Features", "CPU implementer", "CPU part")
    return "\n".join(sorted({ln for ln in lines if ln.split(":")[0].strip() in wanted}))
