"""The tokens file: who may call, on which models, with which scopes.

```yaml
tokens:
  - name: frontend                 # goes into logs and metrics; the token never does
    sha256: 9f86d0...              # hex SHA-256 of the token (`printf %s TOKEN | sha256sum`)
    models: ["aligned", "text-*"]  # names or fnmatch globs
    scopes: [infer, read]          # infer, read, admin
```

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

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
    return Grant(name, raw, tuple(models), frozenset(scopes))


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

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self._grants)
