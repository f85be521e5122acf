"""The Redis client of the shared session store (server/.../redis_store.py) against a real
redis-server: values with a time to live, the compare-and-swap forms, and a store that does not
answer (UNAVAILABLE, without its address or password); the settings that go with it."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pydantic
import pytest

from seqserve_server.config import Settings
from seqserve_server.core.session_store import StoreUnavailable, sequence_key, session_key
from seqserve_server.redis_store import RedisStore, without_password
from seqserve_server.transport.status import status_code
from tests.support import redis_server
from tests.support.server_process import free_port


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    if not redis_server.available():
        pytest.skip(redis_server.MISSING)
    with redis_server.redis_server() as running:
        yield running


def test_values_live_for_their_ttl(url: str) -> None:
    async def run() -> None:
        store = RedisStore(url)
        try:
            assert await store.get("t:a") is None
            assert await store.put("t:a", b"\x00token", 0.2)
            assert await store.get("t:a") == b"\x00token"
            await asyncio.sleep(0.3)
            assert await store.get("t:a") is None
            await store.ping()
        finally:
            await store.close()

    asyncio.run(run())


def test_compare_and_swap(url: str) -> None:
    """`replacing`: only over those bytes (or nothing); `holding`: only those bytes."""

    async def run() -> None:
        store = RedisStore(url)
        try:
            assert await store.put("t:b", b"one", 60, replacing=b"anything")  # nothing there
            assert not await store.put("t:b", b"two", 60, replacing=b"other")
            assert await store.get("t:b") == b"one"
            assert await store.put("t:b", b"two", 60, replacing=b"one")
            assert await store.get("t:b") == b"two"
            assert not await store.delete("t:b", holding=b"one")
            assert await store.delete("t:b", holding=b"two")
            assert not await store.delete("t:b", holding=b"two")  # gone: nothing removed
            assert await store.put("t:c", b"x", 60)
            assert await store.delete("t:c")
            assert not await store.delete("t:c")
        finally:
            await store.close()

    asyncio.run(run())


def test_a_store_that_does_not_answer_is_unavailable_without_its_address() -> None:
    port = free_port()  # nothing listens there

    async def run() -> StoreUnavailable:
        store = RedisStore(f"redis://:s3cret@127.0.0.1:{port}/0", timeout_s=1)
        try:
            with pytest.raises(StoreUnavailable) as caught:
                await store.get("t:d")
            return caught.value
        finally:
            await store.close()

    error = asyncio.run(run())
    assert status_code(error).name == "UNAVAILABLE"
    assert "s3cret" not in error.message and str(port) not in error.message
    assert without_password(f"redis://:s3cret@127.0.0.1:{port}/0") == (
        f"redis://:***@127.0.0.1:{port}/0"
    )


def test_keys() -> None:
    assert sequence_key("m", 42) == "seqserve:seq:m:42"
    assert sequence_key("m", "42") == 'seqserve:seq:m:"42"'  # Triton's 42 and "42" differ
    assert sequence_key("m", "wöche") == 'seqserve:seq:m:"wöche"'
    assert session_key("ab12") == "seqserve:session:ab12"


def test_settings(tmp_path: Path) -> None:
    keys = tmp_path / "session.keys"
    keys.write_text(hashlib.sha256(b"k").hexdigest() + "\n")
    with pytest.raises(pydantic.ValidationError, match="needs --session-key-file"):
        Settings(session_store="redis://127.0.0.1:6379/0")
    with pytest.raises(pydantic.ValidationError, match="redis://, rediss:// or unix://"):
        Settings(session_store="http://host/", session_key_file=keys)
    settings = Settings(
        session_store="redis://127.0.0.1:6379/0",
        session_key_file=keys,
        session_store_write="every-step",  # type: ignore[arg-type]
    )
    assert settings.session_store_write == "every-step"
    assert Settings().session_store is None and Settings().session_store_write == "on-drain"
