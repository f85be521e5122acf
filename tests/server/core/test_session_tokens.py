"""Resume tokens in-process: a session's state sealed under the shared key opens bit-equal on any
replica holding it, and anything else (tampered, truncated, forged, foreign, expired, too long,
for another caller or model) is refused naming why, as INVALID_ARGUMENT or FAILED_PRECONDITION,
never echoing token bytes or key material."""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from seqserve_server.core import errors
from seqserve_server.core import session_tokens as tokens
from seqserve_server.core.session_tokens import (
    SessionKeys,
    SessionSnapshot,
    check_binding,
    file_sha256,
    state_layout,
    token_bound,
)
from seqserve_server.core.stepping.programs import SessionSupport
from seqserve_server.core.stepping.state import STEPS, OpKeys, prefix_key, static_key
from seqserve_server.transport.status import status_code, to_status

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
NOW = 1_750_000_000.0
TTL = 3600.0
BOUND = 1 << 20
# A float pattern no cipher output contains by chance: eight distinctive doubles.
PATTERN = np.array([3.14159265358979, -2.71828182845904, 1.41421356237309, 6.02214076e23,
                    -1.602176634e-19, 299792458.0, 6.62607015e-34, 1.380649e-23])  # fmt: skip


def _state() -> dict[str, np.ndarray]:
    """A realistic batch-1 state: steps fed, static inputs, recompute prefixes (numbers and
    token ids), cell states, a convolution window; ints, floats and a mask."""
    rng = np.random.default_rng(7)
    cell = OpKeys.of(2, "lstm")
    return {
        STEPS: np.array([7], np.int32),
        static_key("label"): np.array([[3]], np.int64),
        static_key("vector"): rng.normal(size=(1, 4)).astype(np.float32),
        prefix_key("input"): rng.normal(size=(1, 7, 3)).astype(np.float32),
        prefix_key("tokens"): rng.integers(0, 500, size=(1, 7)).astype(np.int32),
        cell.cell_state(0): rng.normal(size=(1, 16)).astype(np.float32),
        cell.cell_state(1): rng.normal(size=(1, 16)).astype(np.float32),
        cell.last_output: rng.normal(size=(1, 16)).astype(np.float16),
        OpKeys.of(3, "conv").window: rng.normal(size=(1, 2, 8)),
        "04.mask/m": np.array([[True, False, True]]),
    }


def _snapshot(**changes: Any) -> SessionSnapshot:
    state = _state()
    base = SessionSnapshot(
        model="aligned",
        version=2,
        model_digest="ab" * 32,
        layout=state_layout(state, SessionSupport.RECOMPUTE),
        state=state,
        steps=7,
        top_k=3,
        emit_on_request=True,
        finished=False,
        caller="alice",
        created=NOW - 10.25,
    )
    return dataclasses.replace(base, **changes)


def _open(keys: SessionKeys, token: Any, **changes: Any) -> SessionSnapshot:
    options: dict[str, Any] = {"caller": "alice", "now": NOW, "ttl_s": TTL, "max_bytes": BOUND}
    return keys.open(token, **(options | changes))


def _plaintext(token: bytes, key: bytes = KEY_A) -> bytes:
    """What the token hides, decrypted as `open` does (for tests that look inside)."""
    header = token[: tokens.HEADER_BYTES]
    return AESGCM(key).decrypt(header[-tokens.NONCE_BYTES :], token[tokens.HEADER_BYTES :], header)


def _assert_same(got: SessionSnapshot, sent: SessionSnapshot) -> None:
    fields = [f.name for f in dataclasses.fields(SessionSnapshot) if f.name != "state"]
    assert {f: getattr(got, f) for f in fields} == {f: getattr(sent, f) for f in fields}
    assert sorted(got.state) == sorted(sent.state)
    for key, array in sent.state.items():
        back = got.state[key]
        assert back.dtype == array.dtype.newbyteorder("=") and back.shape == array.shape, key
        assert back.tobytes() == np.ascontiguousarray(array, back.dtype).tobytes(), key
        assert back.flags.writeable and back.flags.owndata, key  # not a view of the token


def _refused_invalid(call: Any, why: str = "") -> errors.BadResumeToken:
    with pytest.raises(errors.BadResumeToken, match=why or None) as caught:
        call()
    assert status_code(caught.value) is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field == "open.resume"
    return caught.value


def _refused_precondition(call: Any, why: str = "") -> errors.ResumeTokenRefused:
    with pytest.raises(errors.ResumeTokenRefused, match=why or None) as caught:
        call()
    assert status_code(caught.value) is grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.field == "open.resume"
    return caught.value


# --- round trips ---------------------------------------------------------------------------------


def test_a_realistic_state_round_trips_bit_equal() -> None:
    keys = SessionKeys([KEY_A])
    sent = _snapshot()
    _assert_same(_open(keys, keys.seal(sent)), sent)


def test_the_last_request_and_its_answer_round_trip_in_payload_2() -> None:
    """A session that remembers a request carries it and its (opaque) answer; one that does
    not is written as payload 1, which servers that read only payload 1 still open."""
    keys = SessionKeys([KEY_A])
    sent = _snapshot(request="ab" * 32, reply=b"\0answer\xff" * 50)
    _assert_same(_open(keys, keys.seal(sent)), sent)
    header = _header_of(keys.seal(sent))
    assert header["payload"] == 2 and header["reply"] == len(sent.reply)
    assert _header_of(keys.seal(_snapshot()))["payload"] == 1
    applied_without_answer = _snapshot(request="cd" * 32)  # its answer was too large to keep
    _assert_same(_open(keys, keys.seal(applied_without_answer)), applied_without_answer)


def _header_of(token: bytes) -> dict[str, Any]:
    body = tokens._unpack(_plaintext(token), BOUND)
    (length,) = tokens._LENGTH.unpack_from(body)
    header: dict[str, Any] = json.loads(body[tokens._LENGTH.size : tokens._LENGTH.size + length])
    return header


def test_tokens_of_one_state_differ_and_each_opens() -> None:
    keys = SessionKeys([KEY_A])
    first, second = keys.seal(_snapshot()), keys.seal(_snapshot())
    assert first != second  # a fresh nonce each time
    for token in (first, second, bytearray(first), memoryview(second)):
        _assert_same(_open(keys, token), _snapshot())


def test_big_endian_arrays_and_empty_prefixes_round_trip() -> None:
    keys = SessionKeys([KEY_A])
    state = {
        STEPS: np.array([0], ">i4"),
        prefix_key("input"): np.zeros((1, 0, 3), np.float32),
        prefix_key("ids"): np.zeros((1, 0), np.int64),
        "00.gru/s0": np.arange(4, dtype=">f8").reshape(1, 4),
    }
    sent = _snapshot(state=state, steps=0, caller="")
    _assert_same(_open(keys, keys.seal(sent), caller=""), sent)


_DTYPES = st.sampled_from(["bool", "int32", "int64", "float16", "float32", "float64"])
_ARRAYS = _DTYPES.flatmap(
    lambda dtype: hnp.arrays(
        dtype,
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4).map(
            lambda shape: (1, *shape)
        ),
    )
)


@settings(max_examples=60, deadline=None)
@given(
    state=st.dictionaries(st.text("abx/0.s", min_size=1, max_size=8), _ARRAYS, max_size=6),
    steps=st.integers(0, 2**40),
    top_k=st.integers(0, 1000),
    flags=st.tuples(st.booleans(), st.booleans()),
    caller=st.text(max_size=20),
    created=st.floats(0, 4e9),
)
def test_any_state_round_trips_bit_equal(
    state: dict[str, np.ndarray],
    steps: int,
    top_k: int,
    flags: tuple[bool, bool],
    caller: str,
    created: float,
) -> None:
    keys = SessionKeys([KEY_A])
    sent = _snapshot(state=state, steps=steps, top_k=top_k, emit_on_request=flags[0],
                     finished=flags[1], caller=caller, created=created)  # fmt: skip
    _assert_same(_open(keys, keys.seal(sent), caller=caller, now=created), sent)


# --- what a token reveals ------------------------------------------------------------------------


def test_the_raw_arrays_do_not_appear_in_the_token() -> None:
    keys = SessionKeys([KEY_A])
    state = _state() | {"05.dense/pattern": np.tile(PATTERN, 8)[None]}
    token = keys.seal(_snapshot(state=state))
    needles = [PATTERN[:4].tobytes(), state[prefix_key("input")][0, :2].tobytes()]
    plaintext = zlib.decompress(_plaintext(token)[1:])  # compressible: the ids and the tiles
    for needle in needles:
        assert needle in plaintext  # so that the test below means something
        assert needle not in token
    assert b"alice" not in token and b"aligned" not in token and b"ab" * 32 not in token


def test_a_token_carries_no_path_and_is_unreadable_without_the_key(tmp_path: Path) -> None:
    model_file = tmp_path / "srv" / "models" / "aligned" / "2" / "model.keras"
    model_file.parent.mkdir(parents=True)
    model_file.write_bytes(b"not really a model")
    keys = SessionKeys([KEY_A])
    token = keys.seal(_snapshot(model_digest=file_sha256(model_file)))
    body = _plaintext(token)
    body = zlib.decompress(body[1:]) if body[0] == 1 else body[1:]
    (length,) = tokens._LENGTH.unpack_from(body)
    header = json.loads(body[4 : 4 + length])
    assert set(header) == tokens._FIELDS  # no field for a path
    for part in (str(model_file), str(tmp_path), "model.keras", "/srv/"):
        assert part.encode() not in body and part.encode() not in token
    with pytest.raises(InvalidTag):
        _plaintext(token, KEY_B)


def test_the_model_digest_is_the_files_sha256(tmp_path: Path) -> None:
    path = tmp_path / "model.keras"
    path.write_bytes(b"weights" * 100_000)
    import hashlib

    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_token_size_is_the_arrays_plus_a_bounded_overhead() -> None:
    """N incompressible float32 values take 4 N bytes plus an overhead that does not grow with
    N (but for the digits of its shape): 42 bytes of envelope and framing, the JSON header."""
    keys = SessionKeys([KEY_A])
    rng = np.random.default_rng(1)
    overheads = {}
    for n in (1, 100, 10_000):
        bits = rng.integers(0, 2**32, size=(1, n), dtype=np.uint32).view(np.float32)
        state = {STEPS: np.array([1], np.int32), "00.lstm/s0": bits}
        sent = _snapshot(
            state=state, model_digest=os.urandom(32).hex(), layout=os.urandom(32).hex()
        )
        token = keys.seal(sent)
        uncompressed = tokens.ENVELOPE_BYTES + tokens._encode(sent)[1]
        assert len(token) <= uncompressed <= token_bound(4 * n + 4)
        overheads[n] = uncompressed - 4 * (n + 1)
    assert max(overheads.values()) - min(overheads.values()) <= 4  # "1", "100", "10000"
    assert tokens.SIZE_OVERHEAD < min(overheads.values()) < tokens.SIZE_OVERHEAD + 400


def test_compression_never_decides_whether_a_token_opens() -> None:
    """The bound is on the uncompressed size, for sealing and opening alike: a state of zeros
    that zlib shrinks a thousandfold opens exactly where its uncompressed token would fit."""
    keys = SessionKeys([KEY_A])
    sent = _snapshot(state={STEPS: np.array([1], np.int32), "x/input": np.zeros((1, 5000, 4))})
    uncompressed = tokens.ENVELOPE_BYTES + tokens._encode(sent)[1]
    token = keys.seal(sent, max_bytes=uncompressed)
    assert len(token) < uncompressed // 100
    _assert_same(_open(keys, token, max_bytes=uncompressed), sent)
    _refused_precondition(lambda: _open(keys, token, max_bytes=uncompressed - 1), "larger than")
    with pytest.raises(errors.LimitExceeded):
        keys.seal(sent, max_bytes=uncompressed - 1)
    assert uncompressed <= token_bound(5000 * 4 * 8 + 4)


# --- refusals: not a token of ours (INVALID_ARGUMENT) --------------------------------------------


def test_tampering_with_any_byte_is_refused() -> None:
    keys = SessionKeys([KEY_A])
    token = keys.seal(_snapshot(state={STEPS: np.array([1], np.int32)}))
    regions = {
        range(0, 4): "not a seqserve token",  # magic
        range(4, 5): "format",
        range(5, 9): "unknown key",  # key id
        range(9, 21): "not authentic",  # nonce
        range(21, len(token) - 16): "not authentic",  # ciphertext
        range(len(token) - 16, len(token)): "not authentic",  # tag
    }
    for where, why in regions.items():
        for i in where:
            for flip in (0x01, 0x80):
                tampered = bytearray(token)
                tampered[i] ^= flip
                _refused_invalid(lambda t=bytes(tampered): _open(keys, t), why)


def test_truncated_empty_and_extended_tokens_are_refused() -> None:
    keys = SessionKeys([KEY_A])
    token = keys.seal(_snapshot(state={STEPS: np.array([1], np.int32)}))
    _refused_invalid(lambda: _open(keys, b""), "empty")
    for n in range(1, len(token)):
        _refused_invalid(lambda n=n: _open(keys, token[:n]), "truncated|not authentic")
    _refused_invalid(lambda: _open(keys, token + b"\0"), "not authentic")


def test_random_bytes_are_refused() -> None:
    keys = SessionKeys([KEY_A])
    key_id = tokens._key_id(KEY_A)
    for n in (1, 20, 37, 38, 200, 5000):
        _refused_invalid(lambda n=n: _open(keys, os.urandom(n)))
        forged = tokens.MAGIC + bytes([tokens.FORMAT]) + key_id + os.urandom(n + 28)
        _refused_invalid(lambda f=forged: _open(keys, f), "not authentic")


def test_a_token_past_the_bound_is_refused_before_it_is_read() -> None:
    class Unreadable:
        """A token of which only the length may be asked."""

        def __len__(self) -> int:
            return BOUND + 1

        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"read {name} of a token past the bound")

        def __bytes__(self) -> bytes:
            raise AssertionError("read a token past the bound")

    keys = SessionKeys([KEY_A])
    error = _refused_invalid(lambda: _open(keys, Unreadable()), f"more than the {BOUND}")
    token = keys.seal(_snapshot())
    _refused_invalid(lambda: _open(keys, token, max_bytes=len(token) - 1), "more than")
    assert error.got == f"{BOUND + 1} bytes"


def test_a_key_this_server_does_not_hold_is_refused() -> None:
    token = SessionKeys([KEY_B]).seal(_snapshot())
    _refused_invalid(lambda: _open(SessionKeys([KEY_A]), token), r"unknown key \(rotated out\?\)")


def test_rotation_the_first_key_seals_every_key_opens() -> None:
    old, new = SessionKeys([KEY_A]), SessionKeys([KEY_B, KEY_A])
    sealed_by_old = old.seal(_snapshot())
    _assert_same(_open(new, sealed_by_old), _snapshot())
    sealed_by_new = new.seal(_snapshot())
    assert sealed_by_new[5:9] == tokens._key_id(KEY_B)
    _refused_invalid(lambda: _open(old, sealed_by_new), "unknown key")
    assert new.key_ids == (tokens._key_id(KEY_B).hex(), tokens._key_id(KEY_A).hex())


def test_colliding_key_ids_try_each_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "_key_id", lambda key: b"\0\0\0\0")
    token = SessionKeys([KEY_A]).seal(_snapshot())
    _assert_same(_open(SessionKeys([KEY_B, KEY_A]), token), _snapshot())
    _refused_invalid(lambda: _open(SessionKeys([KEY_B]), token), "not authentic")


# --- refusals: authentic, but not here or now (FAILED_PRECONDITION) -------------------------------


def test_an_expired_token_is_refused_saying_by_how_much() -> None:
    keys = SessionKeys([KEY_A])
    token = keys.seal(_snapshot(created=NOW - TTL - 12))
    error = _refused_precondition(lambda: _open(keys, token), r"expired 12 s ago \(ttl 3600 s\)")
    assert error.expected == "a token at most 3600 s old"
    on_time = keys.seal(_snapshot(created=NOW - TTL))
    assert _open(keys, on_time).created == NOW - TTL
    from_a_clock_ahead = keys.seal(_snapshot(created=NOW + 5))
    assert _open(keys, from_a_clock_ahead).created == NOW + 5


def test_a_token_of_another_caller_is_refused_without_naming_it() -> None:
    keys = SessionKeys([KEY_A])
    token = keys.seal(_snapshot(caller="alice"))
    error = _refused_precondition(lambda: _open(keys, token, caller="bob"), "another caller")
    assert "alice" not in str(error) and "alice" not in error.got
    sealed_without_auth = keys.seal(_snapshot(caller=""))
    _refused_precondition(lambda: _open(keys, sealed_without_auth, caller="bob"), "another caller")
    assert _open(keys, sealed_without_auth, caller="").caller == ""


def test_a_foreign_caller_learns_nothing_of_expiry() -> None:
    keys = SessionKeys([KEY_A])
    token = keys.seal(_snapshot(created=NOW - 10 * TTL))
    _refused_precondition(lambda: _open(keys, token, caller="mallory"), "another caller")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"model": "classifier"}, "is for model 'aligned', not 'classifier'"),
        ({"version": 3}, "is for version 2 of 'aligned', not version 3"),
        ({"model_digest": "cd" * 32}, "another model file"),
        ({"layout": "ef" * 32}, "state layout"),
    ],
    ids=["model", "version", "model_digest", "layout"],
)
def test_a_binding_that_differs_is_refused_naming_what(change: dict[str, Any], why: str) -> None:
    snapshot = _snapshot()
    binding: dict[str, Any] = {"model": "aligned", "version": 2, "model_digest": "ab" * 32,
                               "layout": snapshot.layout}  # fmt: skip
    check_binding(snapshot, **binding)
    error = _refused_precondition(lambda: check_binding(snapshot, **(binding | change)), why)
    assert "cd" * 32 not in str(error) and "ab" * 32 not in str(error)


# --- the state layout ----------------------------------------------------------------------------


def test_the_layout_ignores_the_prefix_length_and_the_batch_axis() -> None:
    fresh = {STEPS: np.zeros((1,), np.int32), prefix_key("input"): np.zeros((1, 0, 3), np.float32)}
    stepped = {STEPS: np.array([9], np.int32), prefix_key("input"): np.ones((1, 9, 3), np.float32)}
    batch = {k: np.repeat(v, 3, axis=0) for k, v in stepped.items()}
    layouts = {state_layout(s, SessionSupport.RECOMPUTE) for s in (fresh, stepped, batch)}
    assert len(layouts) == 1
    assert state_layout(fresh, "recompute") in layouts  # the enum or its value


@pytest.mark.parametrize(
    "other",
    [
        {prefix_key("input"): np.zeros((1, 0, 4), np.float32)},  # features
        {prefix_key("input"): np.zeros((1, 0, 3), np.float64)},  # dtype
        {prefix_key("input"): np.zeros((1, 0), np.float32)},  # rank
        {prefix_key("other"): np.zeros((1, 0, 3), np.float32)},  # name
        {prefix_key("input"): np.zeros((1, 0, 3), np.float32), "00.lstm/s0": np.zeros((1, 4))},
    ],
    ids=["features", "dtype", "rank", "name", "a key more"],
)
def test_the_layout_tells_programs_apart(other: dict[str, np.ndarray]) -> None:
    base = {STEPS: np.zeros((1,), np.int32)}
    mine = base | {prefix_key("input"): np.zeros((1, 0, 3), np.float32)}
    assert state_layout(mine, "recompute") != state_layout(base | other, "recompute")
    assert state_layout(mine, "recompute") != state_layout(mine, "incremental")


def test_a_cell_states_size_counts_in_the_layout() -> None:
    def cell(n: int) -> dict[str, np.ndarray]:
        return {STEPS: np.zeros((1,), np.int32), "00.lstm/s0": np.zeros((1, n))}

    assert state_layout(cell(4), "incremental") != state_layout(cell(8), "incremental")


def test_the_prefix_key_is_state_pys() -> None:
    assert prefix_key("input").startswith(tokens._PREFIX)
    assert not static_key("input").startswith(tokens._PREFIX)


# --- the key file --------------------------------------------------------------------------------


def test_the_key_file_reads_keys_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "session.keys"
    path.write_text(
        f"# seqserve session keys: the first seals\n\n{KEY_B.hex()}  # 2025-06\n"
        f"   {KEY_A.hex().upper()}\n# retired\n"
    )
    keys = SessionKeys.from_file(path)
    assert keys.key_ids == SessionKeys([KEY_B, KEY_A]).key_ids
    _assert_same(_open(keys, SessionKeys([KEY_A]).seal(_snapshot())), _snapshot())
    assert KEY_A.hex() not in repr(keys) and KEY_B.hex() not in repr(keys)


def test_a_generated_line_is_a_key() -> None:
    line = SessionKeys.generate_line()
    assert len(line) == 64 and bytes.fromhex(line) and line != SessionKeys.generate_line()


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (KEY_B.hex()[:-2], "line 3: expected a key of 64 hex digits .* got 62 hex digits"),
        (KEY_B.hex() + "00", "line 3: .* got 66 hex digits"),
        (KEY_B.hex()[:-1] + "g", "line 3: .* not all hex digits"),
        (KEY_B.hex()[:32] + " " + KEY_B.hex()[32:], "line 3: .* not all hex digits"),
        (KEY_A.hex(), "line 3 repeats the key of line 2"),
        ("00" * 32, "line 3: a placeholder"),
    ],
    ids=["short", "long", "not hex", "split", "repeated", "placeholder"],
)
def test_a_bad_key_line_is_named_and_not_echoed(tmp_path: Path, line: str, why: str) -> None:
    path = tmp_path / "session.keys"
    path.write_text(f"# keys\n{KEY_A.hex()}\n{line}\n")
    with pytest.raises(ValueError, match=why) as caught:
        SessionKeys.from_file(path)
    message = str(caught.value)
    assert KEY_A.hex() not in message and KEY_B.hex()[:16] not in message


@pytest.mark.parametrize(
    ("content", "why"),
    [(b"", "no session key"), (b"# only comments\n\n", "no session key"),
     (b"\xff\xfe" + b"0" * 62, "not UTF-8")],
    ids=["empty", "comments", "binary"],
)  # fmt: skip
def test_a_key_file_without_keys_is_refused(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "session.keys"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=why):
        SessionKeys.from_file(path)


def test_keys_are_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes, not 16"):
        SessionKeys([bytes(16)])
    with pytest.raises(ValueError, match="at least one"):
        SessionKeys([])


# --- authentic but malformed payloads: still refused, nothing allocated ---------------------------


def _header(**changes: Any) -> dict[str, Any]:
    header = {"payload": 1, "model": "aligned", "version": 2, "digest": "ab" * 32,
              "layout": "cd" * 32, "steps": 1, "messages": 1, "top_k": 0, "emit": False, "finished": False,
              "caller": "alice", "created": NOW, "arrays": [["t", "int32", [1]]]}  # fmt: skip
    return header | changes


def _sealed(header: dict[str, Any], data: bytes = b"\1\0\0\0", plain: bytes | None = None) -> bytes:
    """A token sealed with the real key around a body built by hand."""
    if plain is None:
        plain = tokens._plaintext(tokens._body(header, [data]))
    return SessionKeys([KEY_A])._seal_plaintext(plain)


def test_a_hand_built_body_opens() -> None:
    snapshot = _open(SessionKeys([KEY_A]), _sealed(_header()))
    assert snapshot.state[STEPS].tolist() == [1] and snapshot.caller == "alice"


@pytest.mark.parametrize(
    ("header", "data", "why"),
    [
        (_header(arrays=[["t", "object", [1]]]), b"\0" * 8, "dtype 'object'"),
        (_header(arrays=[["t", "<U8", [1]]]), b"\0" * 32, "dtype '<U8'"),
        (_header(arrays=[["t", "float128", [1]]]), b"\0" * 16, "dtype 'float128'"),
        (_header(arrays=[["t", {"descr": "O"}, [1]]]), b"\0" * 8, "dtype 'dict'"),
        (_header(arrays=[["t", "int32", [1, 2]]]), b"\0" * 4, "take 8 bytes, 4 follow"),
        (_header(arrays=[["t", "int32", [1]]]), b"\0" * 8, "take 4 bytes, 8 follow"),
        (_header(arrays=[["t", "float64", [1, 10**12, 10**12]]]), b"\0" * 8, "take 8000000"),
        (_header(arrays=[["t", "int32", [1, -1]]]), b"", "not a list of sizes"),
        (_header(arrays=[["t", "int32", [1, 2.0]]]), b"\0" * 8, "not a list of sizes"),
        (_header(arrays=[["t", "int32", [2]]]), b"\0" * 8, "not batch-1"),
        (_header(arrays=[["t", "int32", []]]), b"\0" * 4, "not batch-1"),
        (_header(arrays=[["t", "int32", [1] * 9]]), b"\0" * 4, "not batch-1 of rank 1 to 8"),
        (_header(arrays=[["t", "int32", [1]], ["t", "int32", [1]]]), b"\0" * 8, "twice"),
        (_header(arrays=[["", "int32", [1]]]), b"\0" * 4, "key is not"),
        (_header(arrays=[["t", "int32"]]), b"\0" * 4, r"not \[key, dtype, shape\]"),
        (_header(arrays={"t": "int32"}), b"\0" * 4, "arrays is not a list"),
        (_header(payload=3), b"\0" * 4, "payload version 3"),
        (_header(payload=2), b"\0" * 4, r"fields \['reply', 'request'\] missing"),
        (_header(payload=1, request="r", reply=0), b"\0" * 4, r"fields \['reply', 'request'\]"),
        (_header(payload=2, request="r", reply=5), b"\0" * 4, "a reply of 5 bytes in 4"),
        (_header(payload=2, request="r", reply=-1), b"\0" * 4, "reply is negative"),
        (_header(payload=2, request=7, reply=0), b"\0" * 4, "request is not a str"),
        (_header(payload=2, request="r" * 129, reply=0), b"\0" * 4, "longer than 128"),
        (_header(path="/srv/models"), b"\0" * 4, r"fields \['path'\]"),
        ({k: v for k, v in _header().items() if k != "caller"}, b"\0" * 4, "caller"),
        (_header(version=True), b"\0" * 4, "version is not a int"),
        (_header(steps=-1), b"\0" * 4, "steps is negative"),
        (_header(caller=None), b"\0" * 4, "caller is not a str"),
        (_header(emit=1), b"\0" * 4, "emit is not a bool"),
        (_header(created="yesterday"), b"\0" * 4, "created is not"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_an_authentic_malformed_payload_is_refused(
    header: dict[str, Any], data: bytes, why: str
) -> None:
    keys = SessionKeys([KEY_A])
    _refused_invalid(lambda: _open(keys, _sealed(header, data)), "payload is malformed: .*" + why)


@pytest.mark.parametrize(
    ("plain", "why"),
    [
        (b"\2" + tokens._body(_header(), [b"\1\0\0\0"]), "unknown encoding 2"),
        (b"\0", "no header"),
        (b"\0" + tokens._LENGTH.pack(10**6) + b"{}", "a header of 1000000 bytes"),
        (b"\0" + tokens._LENGTH.pack(3) + b"{x}", "not JSON"),
        (b"\0" + tokens._LENGTH.pack(2) + b"[]", "not an object"),
        (b"\0" + tokens._LENGTH.pack(4) + "{}\u00e9".encode(), "not JSON"),
        (b"\0" + tokens._LENGTH.pack(2000) + b"[" * 2000, "not JSON"),
        (b"\1" + b"not zlib", "not zlib"),
        (b"\1" + zlib.compress(tokens._body(_header(), [b"\1\0\0\0"]))[:-6], "truncated"),
        (b"\1" + zlib.compress(tokens._body(_header(), [b"\1\0\0\0"])) + b"!", "followed by"),
    ],
    ids=["encoding", "empty", "header length", "json", "list", "ascii", "deep", "zlib",
         "zlib truncated", "zlib trailing"],
)  # fmt: skip
def test_an_authentic_malformed_plaintext_is_refused(plain: bytes, why: str) -> None:
    keys = SessionKeys([KEY_A])
    token = SessionKeys([KEY_A])._seal_plaintext(plain)
    _refused_invalid(lambda: _open(keys, token), why)


def test_a_zlib_bomb_stops_at_the_bound() -> None:
    """Zeros that inflate past what a token of the bound holds are refused after inflating
    no more than the bound."""
    keys = SessionKeys([KEY_A])
    bomb = b"\1" + zlib.compress(tokens._body(_header(), [b"\1\0\0\0"]) + bytes(50 << 20), 9)
    token = keys._seal_plaintext(bomb)
    assert len(token) < 100_000
    _refused_precondition(lambda: _open(keys, token, max_bytes=100_000), "larger than")


def test_bools_decode_as_bools() -> None:
    header = _header(arrays=[["t", "int32", [1]], ["m", "bool", [1, 3]]])
    opened = _open(SessionKeys([KEY_A]), _sealed(header, b"\1\0\0\0" + b"\0\1\7"))
    assert opened.state["m"].dtype == np.bool_ and opened.state["m"].tolist() == [
        [False, True, True]
    ]


# --- sealing refuses what no server makes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"state": {"t": np.array(["x"], object)}}, "dtype object"),
        ({"state": {"t": np.zeros((1,), np.uint8)}}, "dtype uint8"),
        ({"state": {"t": np.zeros((2, 3))}}, "not batch-1"),
        ({"state": {"t": np.float32(1.0)}}, "not batch-1"),
        ({"steps": -1}, "steps is negative"),
        ({"version": "2"}, "version is not a int"),
        ({"created": float("nan")}, "created is not"),
    ],
    ids=["object", "uint8", "batch", "scalar", "steps", "version", "created"],
)
def test_sealing_refuses_what_would_not_open(change: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        SessionKeys([KEY_A]).seal(_snapshot(**change))


def test_numpy_integers_seal_as_ints() -> None:
    keys = SessionKeys([KEY_A])
    sent = _snapshot(version=np.int64(2), steps=np.int32(7), top_k=np.int64(3))
    opened = _open(keys, keys.seal(sent))
    assert (opened.version, opened.steps, opened.top_k) == (2, 7, 3)
    assert type(opened.steps) is int


# --- what the errors say -------------------------------------------------------------------------


def test_refusals_never_echo_the_token_or_the_key() -> None:
    keys = SessionKeys([KEY_A])
    token = keys.seal(_snapshot(created=NOW - 2 * TTL))
    tampered = token[:30] + bytes([token[30] ^ 1]) + token[31:]
    calls = [
        lambda: _open(keys, tampered),
        lambda: _open(keys, token[:40]),
        lambda: _open(SessionKeys([KEY_B]), token),
        lambda: _open(keys, token),
        lambda: _open(keys, token, caller="bob"),
        lambda: _open(keys, token, max_bytes=10),
    ]
    for call in calls:
        with pytest.raises(errors.InvalidInput) as caught:
            call()
        status = to_status(caught.value)
        said = " ".join([str(caught.value), caught.value.expected, caught.value.got,
                         status.details or "", repr(status.trailing_metadata)])  # fmt: skip
        for secret in (KEY_A.hex(), KEY_B.hex(), token[21:29].hex(), repr(token[21:29])):
            assert secret not in said
        assert status.code in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.FAILED_PRECONDITION,
        )


def test_the_two_refusals_map_to_their_codes_with_the_field() -> None:
    bad = errors.BadResumeToken("an unknown key", "resume token: unknown key (rotated out?)")
    stale = errors.ResumeTokenRefused("a token at most 60 s old", "a token 99 s old", "expired")
    assert (status_code(bad), bad.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "RESUME_TOKEN_INVALID",
    )
    assert (status_code(stale), stale.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "RESUME_TOKEN_REFUSED",
    )
    assert to_status(bad).details == "resume token: unknown key (rotated out?)"
