"""Resume tokens: a session's state sealed so that any replica holding the key can continue it.

A `SessionSnapshot` is everything a session needs to go on (every array of its state, the steps
fed, top_k and emit settings, whether its input ended), bound to what it may be continued on: the
model's name and version, the SHA-256 of the model file (`file_sha256`) and the step program's
state layout (`state_layout`); and to whom and until when: the caller (the auth token's name, ""
when auth is off) and its creation time. `SessionKeys.seal` turns it into an opaque token;
`SessionKeys.open` turns a token back into a snapshot or refuses it, naming why:

- `BadResumeToken` (INVALID_ARGUMENT): longer than the bound (refused before anything else),
  empty, truncated, not a resume token, a format this server does not read, sealed under a key
  it does not hold ("unknown key (rotated out?)"), tampered with or forged ("not authentic").
- `ResumeTokenRefused` (FAILED_PRECONDITION): an authentic token sealed for another caller,
  expired (`now > created + ttl_s`), or whose state grew past the bound; `check_binding`, for
  another model, version, model file or step program layout.

Messages and error details never carry token bytes, key material or the other caller's name.

Keys (`SessionKeys.from_file`, the `--session-key-file`): one per line, 32 random bytes as 64
hex characters; '#' starts a comment, blank lines are ignored. The first key seals, every key
opens: to rotate, put a new key first and keep the old one until the tokens it sealed expired.

Token, format 1 (integers little-endian):

    offset  bytes  field
    0       4      magic b"SQRT"
    4       1      format (1)
    5       4      key id: SHA-256(b"seqserve session key\\0" + key)[:4] (picks the key to try)
    9       12     nonce, random per token
    21      n+16   AES-256-GCM of the n-byte plaintext, the 16-byte tag last; the associated
                   data is bytes 0..21, so the magic, format and key id are authenticated too

Plaintext: one byte, 0 (raw) or 1 (zlib, used only where it is shorter), then the body:

    0       4      h, the length of the header
    4       h      header: JSON (ASCII, sorted keys, no spaces) of the fields below
    4+h     ...    the arrays' bytes, C order, little-endian, in the header's order, and nothing
                   else: their sizes must add up to exactly the bytes left

    {"payload": 1, "model": str, "version": int, "digest": str, "layout": str, "steps": int,
     "messages": int, "top_k": int, "emit": bool, "finished": bool, "caller": str,
     "created": float,
     "arrays": [[key, dtype, shape], ...]}      dtype: bool int32 int64 float16 float32 float64

Payload 2 (written only where the session remembers a request; payload 1 otherwise, so servers
that read only payload 1 still open every other token) adds two fields: "request" (str, at most
`MAX_REQUEST_CHARS`: the transport's name for the last request applied) and "reply" (int: the
byte count of the answer given to it, opaque to the core, which follows the arrays' bytes).

Decoding (after authentication) accepts exactly these fields and dtypes, batch-1 shapes of rank
1 to `MAX_RANK`, and checks every shape against the bytes left before allocating anything:
nothing is unpickled or evaluated.

Size: a token is `SIZE_OVERHEAD` (42 bytes: envelope 37, plaintext framing 5) + the header
(about 300 bytes with two SHA-256 digests, plus about 32 per array; at most `MAX_HEADER_BYTES`)
+ the arrays' bytes, less where zlib helps: N float32 cell-state values in one array take about
4 N + 375 bytes. `token_bound(state_bytes)` is the most a state of that many bytes seals to.
An incremental program's state has a fixed size; a recompute program's prefix grows with the
steps fed, so its bound is the model's sequence length limit times each sequence input's bytes
per step (features x itemsize), plus the fixed part. `open` refuses a token longer than
`max_bytes` before reading it, and a plaintext that decompresses past what a `max_bytes` token
holds uncompressed: compression never decides whether a token opens.

What a token is not: it carries no server path (the snapshot has none) and is not readable
without the key; it is a bearer capability for its caller until it expires, so an older token
resumes the older state (nothing is shared between replicas to make a token single-use).
Random 96-bit nonces keep AES-GCM safe for about 2**32 tokens per key: rotate long before.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import os
import secrets
import string
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import BadResumeToken, LimitExceeded, ResumeTokenRefused
from .reference_cache import file_sha256

__all__ = [
    "MAX_HEADER_BYTES",
    "SIZE_OVERHEAD",
    "SessionKeys",
    "SessionSnapshot",
    "check_binding",
    "file_sha256",
    "state_layout",
    "token_bound",
]

MAGIC = b"SQRT"
FORMAT = 1
PAYLOAD = 1  # the body's layout, in its header
PAYLOAD_WITH_REPLY = 2  # ... and the last request applied with its answer
KEY_BYTES = 32  # AES-256
KEY_ID_BYTES = 4
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_BYTES = len(MAGIC) + 1 + KEY_ID_BYTES + NONCE_BYTES  # 21: authenticated, not encrypted
ENVELOPE_BYTES = HEADER_BYTES + TAG_BYTES  # 37
FRAMING_BYTES = 1 + 4  # the plaintext's encoding byte, the header's length
SIZE_OVERHEAD = ENVELOPE_BYTES + FRAMING_BYTES  # 42, besides the JSON header and the arrays
MAX_HEADER_BYTES = 64 * 1024  # hundreds of arrays with long names fit many times over
MAX_RANK = 8
_KEY_ID_CONTEXT = b"seqserve session key\0"
_RAW, _ZLIB = 0, 1
_LENGTH = struct.Struct("<I")

# What a state may hold, stored little-endian whatever the machine's order.
_DTYPES = {
    name: np.dtype(name).newbyteorder("<")
    for name in ("bool", "int32", "int64", "float16", "float32", "float64")
}
_FIELDS = frozenset(
    ("payload", "model", "version", "digest", "layout", "steps", "messages", "top_k", "emit",
     "finished", "caller", "created", "arrays")
)  # fmt: skip
_PAYLOAD_FIELDS = {PAYLOAD: _FIELDS, PAYLOAD_WITH_REPLY: _FIELDS | {"request", "reply"}}
MAX_REQUEST_CHARS = 128

# stepping/state.py `prefix_key(name)`: a recompute program's steps fed so far, whose time axis
# (axis 1) grows; state.py imports TensorFlow, which this module does not need.
_PREFIX = "x/"


@dataclass(frozen=True, eq=False)  # eq: arrays have no single truth value
class SessionSnapshot:
    """Everything a session needs to continue, and what it may be continued on."""

    model: str
    version: int
    model_digest: str  # SHA-256 (hex) of the model file: `file_sha256`
    layout: str  # `state_layout` of the step program's state
    state: dict[str, np.ndarray]  # batch-1 arrays
    steps: int
    top_k: int
    emit_on_request: bool
    finished: bool
    caller: str  # the auth token's name, "" when auth is off
    created: float  # unix time, seconds
    messages: int = 0  # steps and reset messages processed since first opened (across resumes)
    request: str = ""  # the last request applied, as the transport names it ("": none kept)
    reply: bytes = b""  # the answer it was given (the transport's bytes; b"": not kept)


def state_layout(state: Mapping[str, np.ndarray], support: str) -> str:
    """A digest of a state's layout under a kind of step program (`SessionSupport` or its
    value): each key's dtype and shape without the batch axis, a recompute prefix's time length
    left out (only its rank and its other axes count), so a fresh state and a stepped one of the
    same program agree."""
    kind = support.value if isinstance(support, enum.Enum) else str(support)
    entries = []
    for key in sorted(state):
        array = np.asarray(state[key])
        dims: list[int | str] = [int(d) for d in array.shape[1:]]
        if key.startswith(_PREFIX) and dims:
            dims[0] = "*"
        entries.append([key, array.dtype.name, dims])
    text = json.dumps(["seqserve-state-layout-1", kind, entries], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def check_binding(
    snapshot: SessionSnapshot, model: str, version: int, model_digest: str, layout: str
) -> None:
    """`ResumeTokenRefused` naming what differs where the snapshot is not for this model
    version, model file and step program."""
    if snapshot.model != model:
        raise ResumeTokenRefused(
            f"a token for model {model!r}",
            f"a token for model {snapshot.model!r}",
            f"resume token is for model {snapshot.model!r}, not {model!r}",
        )
    if snapshot.version != version:
        raise ResumeTokenRefused(
            f"a token for version {version}",
            f"a token for version {snapshot.version}",
            f"resume token is for version {snapshot.version} of {model!r}, not version {version}",
        )
    if snapshot.model_digest != model_digest:
        raise ResumeTokenRefused(
            "a token for this model file",
            "a token for another model file",
            f"resume token is for another model file of {model!r} version {version}"
            " (the file was replaced since)",
        )
    if snapshot.layout != layout:
        raise ResumeTokenRefused(
            "a token of this step program's state layout",
            "a token of another state layout",
            f"resume token's state layout is not that of {model!r} version {version}'s step"
            " program (the server's step program changed)",
        )


def token_bound(state_bytes: int) -> int:
    """The longest token a state of at most `state_bytes` array bytes seals to (uncompressed,
    with the largest header `open` reads): what to pass as `max_bytes`."""
    return SIZE_OVERHEAD + MAX_HEADER_BYTES + state_bytes


class SessionKeys:
    """The keys every replica shares: the first seals, all open."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("at least one session key is needed")
        for key in keys:
            if len(key) != KEY_BYTES:
                raise ValueError(f"a session key is {KEY_BYTES} bytes, not {len(key)}")
        self._keys = [(_key_id(key), AESGCM(bytes(key))) for key in keys]

    def __repr__(self) -> str:
        return f"SessionKeys({len(self._keys)} keys, sealing with {self.key_ids[0]})"

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Each key's id (hex), as tokens carry it: names a key in logs without revealing it."""
        return tuple(key_id.hex() for key_id, _ in self._keys)

    @classmethod
    def from_file(cls, path: Path) -> SessionKeys:
        """One key per line: 64 hex characters (32 random bytes); '#' comments and blank lines
        ignored. A `ValueError` names the line of anything else and never echoes it."""
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not UTF-8 text") from None
        keys: list[bytes] = []
        first_line: dict[bytes, int] = {}
        for number, line in enumerate(text.splitlines(), 1):
            entry = line.split("#", 1)[0].strip()
            if not entry:
                continue
            hex_only = all(c in string.hexdigits for c in entry)
            if len(entry) != 2 * KEY_BYTES or not hex_only:
                what = "hex digits" if hex_only else "characters, not all hex digits"
                raise ValueError(
                    f"{path}: line {number}: expected a key of {2 * KEY_BYTES} hex digits"
                    f" ({KEY_BYTES} random bytes), got {len(entry)} {what}"
                )
            key = bytes.fromhex(entry)
            if len(set(key)) == 1:
                raise ValueError(f"{path}: line {number}: a placeholder, not a random key")
            if key in first_line:
                raise ValueError(f"{path}: line {number} repeats the key of line {first_line[key]}")
            first_line[key] = number
            keys.append(key)
        if not keys:
            raise ValueError(
                f"{path}: no session key (one per line, {2 * KEY_BYTES} hex digits; "
                "`python -c 'import secrets; print(secrets.token_hex(32))'` makes one)"
            )
        return cls(keys)

    @classmethod
    def generate_line(cls) -> str:
        """A new random key, as a line of a key file (without the newline)."""
        return secrets.token_hex(KEY_BYTES)

    def seal(self, snapshot: SessionSnapshot, *, max_bytes: int | None = None) -> bytes:
        """The snapshot as a token, sealed with the first key. `ValueError` for a snapshot no
        server makes (a dtype not in the format, not batch-1); `LimitExceeded` where it would
        take more than `max_bytes` uncompressed (what `open` refuses)."""
        plaintext, size = _encode(snapshot)
        if max_bytes is not None and ENVELOPE_BYTES + size > max_bytes:
            raise LimitExceeded(
                f"the session's state takes {ENVELOPE_BYTES + size} bytes as a resume token,"
                f" more than the {max_bytes} a token may"
            )
        return self._seal_plaintext(plaintext)

    def open(
        self, token: bytes, *, caller: str, now: float, ttl_s: float, max_bytes: int
    ) -> SessionSnapshot:
        """The snapshot a token holds, if this server's keys sealed it for `caller` at most
        `ttl_s` seconds before `now`; else `BadResumeToken` or `ResumeTokenRefused`, naming
        why. The binding to a model is the caller's to check (`check_binding`)."""
        size = len(token)
        if size > max_bytes:
            raise BadResumeToken(
                f"{size} bytes",
                f"resume token is {size} bytes, more than the {max_bytes} this server accepts",
            )
        token = bytes(token)
        if not token:
            raise BadResumeToken("an empty token", "resume token is empty")
        if not token.startswith(MAGIC[:size]):
            raise BadResumeToken("not a resume token", "resume token is not a seqserve token")
        if size > len(MAGIC) and token[len(MAGIC)] != FORMAT:
            raise BadResumeToken(
                f"format {token[len(MAGIC)]}",
                f"resume token has format {token[len(MAGIC)]}; this server reads format {FORMAT}",
            )
        if size < ENVELOPE_BYTES + 1:
            raise BadResumeToken(f"{size} bytes", f"resume token is truncated ({size} bytes)")
        header = token[:HEADER_BYTES]
        key_id, nonce = header[-KEY_ID_BYTES - NONCE_BYTES : -NONCE_BYTES], header[-NONCE_BYTES:]
        candidates = [aead for kid, aead in self._keys if kid == key_id]
        if not candidates:
            raise BadResumeToken("an unknown key", "resume token: unknown key (rotated out?)")
        plaintext = None
        for aead in candidates:  # one, unless two keys' ids collide
            try:
                plaintext = aead.decrypt(nonce, token[HEADER_BYTES:], header)
                break
            except InvalidTag:
                continue
        if plaintext is None:
            raise BadResumeToken(
                "a token that is not authentic",
                "resume token is not authentic (tampered or forged)",
            )
        snapshot = _decode(plaintext, max_body=max_bytes - ENVELOPE_BYTES - 1)
        if snapshot.caller != caller:
            raise ResumeTokenRefused(
                "a token sealed for this caller",
                "a token sealed for another caller",
                "resume token was sealed for another caller",
            )
        age = now - snapshot.created
        if age > ttl_s:
            raise ResumeTokenRefused(
                f"a token at most {ttl_s:g} s old",
                f"a token {age:.0f} s old",
                f"resume token expired {math.ceil(age - ttl_s)} s ago (ttl {ttl_s:g} s)",
            )
        return snapshot

    def _seal_plaintext(self, plaintext: bytes) -> bytes:
        key_id, aead = self._keys[0]
        header = MAGIC + bytes([FORMAT]) + key_id + os.urandom(NONCE_BYTES)
        return header + aead.encrypt(header[-NONCE_BYTES:], plaintext, header)


def _key_id(key: bytes) -> bytes:
    return hashlib.sha256(_KEY_ID_CONTEXT + key).digest()[:KEY_ID_BYTES]


class _Malformed(Exception):
    """What is wrong with a payload (authentic or about to be sealed)."""


def _encode(snapshot: SessionSnapshot) -> tuple[bytes, int]:
    """The plaintext of a snapshot, and its size uncompressed."""
    header: dict[str, Any] = {
        "payload": PAYLOAD,
        "model": snapshot.model,
        "version": _as_int(snapshot.version),
        "digest": snapshot.model_digest,
        "layout": snapshot.layout,
        "steps": _as_int(snapshot.steps),
        "messages": _as_int(snapshot.messages),
        "top_k": _as_int(snapshot.top_k),
        "emit": snapshot.emit_on_request,
        "finished": snapshot.finished,
        "caller": snapshot.caller,
        "created": float(snapshot.created),
        "arrays": [],
    }
    if snapshot.request or snapshot.reply:
        header |= {"payload": PAYLOAD_WITH_REPLY, "request": snapshot.request}
        header["reply"] = len(snapshot.reply)
    blobs = []
    for key in sorted(snapshot.state):
        array = np.asarray(snapshot.state[key])
        if array.dtype.name not in _DTYPES:
            raise ValueError(f"state {key!r}: dtype {array.dtype} is not one a token carries")
        header["arrays"].append([key, array.dtype.name, [int(d) for d in array.shape]])
        blobs.append(np.ascontiguousarray(array, _DTYPES[array.dtype.name]).tobytes())
    body = _body(header, [*blobs, bytes(snapshot.reply)])
    try:  # what decoding accepts, so that every sealed token opens
        _parse(body)
    except _Malformed as exc:
        raise ValueError(f"cannot seal this snapshot: {exc}") from None
    return _plaintext(body), 1 + len(body)


def _as_int(value: Any) -> Any:
    """numpy integers as ints (JSON has no others); anything else as is, for the check."""
    return int(value) if isinstance(value, np.integer) else value


def _body(header: Mapping[str, Any], blobs: Sequence[bytes]) -> bytes:
    # A NaN is written as JSON never would: sealing's check (`_parse`) refuses it by name.
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return b"".join([_LENGTH.pack(len(text)), text, *blobs])


def _plaintext(body: bytes) -> bytes:
    packed = zlib.compress(body)
    return bytes([_ZLIB]) + packed if len(packed) < len(body) else bytes([_RAW]) + body


def _decode(plaintext: bytes, max_body: int) -> SessionSnapshot:
    """The snapshot in an authentic plaintext whose body may take up to `max_body` bytes."""
    try:
        body = _unpack(plaintext, max_body)
        return _read_body(body)
    except _Malformed as exc:
        why = f"resume token payload is malformed: {exc}"
        raise BadResumeToken("a malformed payload", why) from None


def _unpack(plaintext: bytes, max_body: int) -> bytes:
    encoding, rest = plaintext[0], plaintext[1:]
    if encoding == _RAW:
        body = rest
    elif encoding == _ZLIB:
        inflate = zlib.decompressobj()
        try:
            body = inflate.decompress(rest, max_body + 1)
        except zlib.error:
            raise _Malformed("not zlib data") from None
        if len(body) <= max_body and (not inflate.eof or inflate.unused_data):
            raise _Malformed("the compressed data is truncated or followed by more")
    else:
        raise _Malformed(f"unknown encoding {encoding}")
    if len(body) > max_body:
        raise ResumeTokenRefused(
            f"a state of at most {max_body} bytes",
            "a larger state",
            f"resume token's state is larger than the {max_body} bytes this server accepts",
        )
    return body


def _read_body(body: bytes) -> SessionSnapshot:
    fields, entries, data = _parse(body)
    arrays_end = sum(size for *_, size in entries)
    reply = bytes(data[arrays_end:])
    return SessionSnapshot(**fields, state=_arrays(entries, data), reply=reply)


_Entry = tuple[str, "np.dtype[Any]", tuple[int, ...], int]  # key, dtype, shape, bytes


def _parse(body: bytes) -> tuple[dict[str, Any], list[_Entry], memoryview]:
    """A body's fields (but the state), its arrays' table and their bytes, all checked: every
    shape against the bytes that follow, before anything is allocated."""
    if len(body) < _LENGTH.size:
        raise _Malformed("no header")
    (length,) = _LENGTH.unpack_from(body)
    if length > MAX_HEADER_BYTES or _LENGTH.size + length > len(body):
        raise _Malformed(f"a header of {length} bytes in a body of {len(body)}")
    try:
        header = json.loads(body[_LENGTH.size : _LENGTH.size + length].decode("ascii"))
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _Malformed("the header is not JSON") from None
    if not isinstance(header, dict):
        raise _Malformed("the header is not an object")
    payload = header.get("payload")
    expected = _PAYLOAD_FIELDS.get(payload) if type(payload) is int else None
    if expected is None:
        raise _Malformed(f"payload version {payload!r}, not one of {sorted(_PAYLOAD_FIELDS)}")
    if set(header) != expected:
        raise _Malformed(f"fields {sorted(set(header) ^ expected)} missing or unknown")
    fields = {
        "model": _field(header, "model", str),
        "version": _count(header, "version"),
        "model_digest": _field(header, "digest", str),
        "layout": _field(header, "layout", str),
        "steps": _count(header, "steps"),
        "messages": _count(header, "messages"),
        "top_k": _count(header, "top_k"),
        "emit_on_request": _field(header, "emit", bool),
        "finished": _field(header, "finished", bool),
        "caller": _field(header, "caller", str),
        "created": _created(header["created"]),
    }
    data = memoryview(body)[_LENGTH.size + length :]
    reply = 0
    if payload == PAYLOAD_WITH_REPLY:
        fields["request"] = _field(header, "request", str)
        if len(fields["request"]) > MAX_REQUEST_CHARS:
            raise _Malformed(f"request is longer than {MAX_REQUEST_CHARS} characters")
        reply = _count(header, "reply")
        if reply > len(data):
            raise _Malformed(f"a reply of {reply} bytes in {len(data)}")
    return fields, _table(header["arrays"], len(data) - reply), data


def _field(header: Mapping[str, Any], name: str, kind: type) -> Any:
    value = header[name]
    if type(value) is not kind:  # not isinstance: a bool is no count
        raise _Malformed(f"{name} is not a {kind.__name__}")
    return value


def _count(header: Mapping[str, Any], name: str) -> int:
    value = _field(header, name, int)
    if value < 0:
        raise _Malformed(f"{name} is negative")
    return int(value)


def _created(value: Any) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise _Malformed("created is not a finite time")
    return float(value)


def _table(table: Any, available: int) -> list[_Entry]:
    if not isinstance(table, list):
        raise _Malformed("arrays is not a list")
    entries: list[_Entry] = []
    keys: set[str] = set()
    for entry in table:
        key, dtype, shape = _entry(entry)
        if key in keys:
            raise _Malformed(f"array {key!r} is listed twice")
        keys.add(key)
        entries.append((key, dtype, shape, math.prod(shape) * dtype.itemsize))  # no overflow
    total = sum(size for *_, size in entries)
    if total != available:
        raise _Malformed(f"the arrays take {total} bytes, {available} follow the header")
    return entries


def _arrays(entries: list[_Entry], data: memoryview) -> dict[str, np.ndarray]:
    """The arrays of a checked table, each a copy (writable, owning its bytes, native order)."""
    state: dict[str, np.ndarray] = {}
    offset = 0
    for key, dtype, shape, size in entries:
        raw = data[offset : offset + size]
        if dtype.kind == "b":  # any nonzero byte is True, as numpy's bool means
            state[key] = np.frombuffer(raw, np.uint8).reshape(shape) != 0
        else:
            state[key] = np.frombuffer(raw, dtype).reshape(shape).astype(dtype.newbyteorder("="))
        offset += size
    return state


def _entry(entry: Any) -> tuple[str, np.dtype[Any], tuple[int, ...]]:
    if not (isinstance(entry, list) and len(entry) == 3):
        raise _Malformed("an arrays entry is not [key, dtype, shape]")
    key, name, shape = entry
    if not (isinstance(key, str) and key):
        raise _Malformed("an array's key is not a non-empty string")
    if not (isinstance(name, str) and name in _DTYPES):
        shown = name if isinstance(name, str) and len(name) <= 16 else type(name).__name__
        raise _Malformed(f"array {key!r} has dtype {shown!r}, not one of {', '.join(_DTYPES)}")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise _Malformed(f"array {key!r} has a shape that is not a list of sizes")
    if not 1 <= len(shape) <= MAX_RANK or shape[0] != 1:
        raise _Malformed(f"array {key!r} is not batch-1 of rank 1 to {MAX_RANK}: {shape}")
    return key, _DTYPES[name], tuple(shape)
