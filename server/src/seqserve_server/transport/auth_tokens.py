"""The tokens file: who may call, on which models, with which scopes.

```yaml
tokens:
  - name: frontend                 # goes into logs and metrics; the token never does
    sha256: 9f86d0...              # hex SHA-256 of the token (`printf %s TOKEN | sha256sum`)
    models: ["aligned", "text-*"]  # names or fnmatch globs
    scopes: [infer, read]          # infer, read, admin
    weight: 2                      # optional: its share of a full server (default 1)
    max_concurrent: 64             # optional: Predict/ModelInfer calls in progress at once
    rate: 500                      # optional: calls per second (a burst of one second's worth)
```

`weight`, `max_concurrent` and `rate` feed the server's front door (core/call_admission.py): past
the server's capacity, callers get slots in proportion to their weights, and a caller over its
caps waits its turn (`max_concurrent`) or is refused with pushback (`rate`).

The file is read again when its modification time changes (checked at most once a second), so
a removed token is refused from the next check on, without a restart.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.call_admission import CallerPolicy

log = logging.getLogger(__name__)

SCOPES = frozenset({"infer", "read", "admin"})
RECHECK_S = 1.0


class TokensFileError(ValueError):
    """The tokens file does not parse or breaks a rule; the message names the entry."""


@dataclass(frozen=True)
class Grant:
    name: str
    digest: bytes  # SHA-256 of the token
    models: tuple[str, ...]
    scopes: frozenset[str]
    policy: CallerPolicy = field(default_factory=CallerPolicy)

    def covers(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse(text: str) -> tuple[Grant, ...]:
    """The grants of a tokens file's text; TokensFileError says which entry is wrong."""
    data = yaml.safe_load(text) or {}
    entries = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise TokensFileError("expected a mapping with a `tokens` list")
    grants = tuple(_grant(i, entry) for i, entry in enumerate(entries))
    names = [g.name for g in grants]
    if len(set(names)) != len(names):
        raise TokensFileError("token names must be unique (they label logs and metrics)")
    return grants


def _grant(index: int, entry: Any) -> Grant:
    where = f"tokens[{index}]"
    if not isinstance(entry, dict):
        raise TokensFileError(f"{where}: expected a mapping")
    name, hexdigest = entry.get("name"), entry.get("sha256")
    models, scopes = entry.get("models", []), entry.get("scopes", [])
    if not isinstance(name, str) or not name:
        raise TokensFileError(f"{where}.name: expected a non-empty string")
    try:
        raw = bytes.fromhex(hexdigest) if isinstance(hexdigest, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != hashlib.sha256().digest_size:
        raise TokensFileError(f"{where}.sha256: expected 64 hex digits (the token's SHA-256)")
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise TokensFileError(f"{where}.models: expected a list of names or globs")
    if not isinstance(scopes, list) or not set(scopes) <= SCOPES:
        raise TokensFileError(f"{where}.scopes: expected a list of {sorted(SCOPES)}")
    return Grant(name, raw, tuple(models), frozenset(scopes), _policy(where, entry))


_POLICY_RULES: dict[str, tuple[type, str, Callable[[float], bool]]] = {
    "weight": (float, "a number > 0", lambda v: v > 0),
    "max_concurrent": (int, "a whole number >= 0 (0: no cap)", lambda v: v >= 0 and v == int(v)),
    "rate": (float, "a number >= 0 (calls per second; 0: no cap)", lambda v: v >= 0),
}


def _policy(where: str, entry: dict) -> CallerPolicy:
    """The entry's `weight`, `max_concurrent` and `rate`, each optional."""
    values: dict[str, Any] = {}
    for key, (kind, rule, valid) in _POLICY_RULES.items():
        value = entry.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not valid(value):
            raise TokensFileError(f"{where}.{key}: expected {rule}, got {value!r}")
        values[key] = kind(value)
    return CallerPolicy(**values)


class TokensFile:
    """The grants of one file, kept current; `lookup` finds the grant of a presented token."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp = path.stat().st_mtime_ns
        self._grants = parse(path.read_text())  # a bad file at start: refuse to start
        self._checked = time.monotonic()

    def lookup(self, token: str) -> Grant | None:
        """The grant whose digest equals the token's. Every grant is compared, each in constant
        time, so the time taken says nothing about which digest came close."""
        self._refresh()
        presented = digest(token)
        found = None
        for grant in self._grants:
            if hmac.compare_digest(grant.digest, presented):
                found = grant
        return found

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < RECHECK_S:
            return
        with self._lock:
            self._checked = now
            try:
                stamp = self.path.stat().st_mtime_ns
                if stamp == self._stamp:
                    return
                self._stamp = stamp  # a bad file is reported once, not every second
                grants = parse(self.path.read_text())
            except (OSError, yaml.YAMLError, TokensFileError) as exc:
                # Keep serving with the last good grants; a half-written file must not lock
                # everyone out (or let everyone in).
                log.error("tokens file %s not reloaded: %s", self.path, exc)
                return
            self._grants = grants
            log.info("tokens file reloaded: %d tokens", len(grants))

    def policy(self, name: str) -> CallerPolicy:
        """The share and caps of the token named `name` (the defaults for any other caller)."""
        self._refresh()
        return next((g.policy for g in self._grants if g.name == name), CallerPolicy())

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self._grants)
