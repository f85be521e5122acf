"""The shared session store in Redis (`--session-store redis://host:6379/0`): core/session_store.py
says what it holds and when; this is the client (PyPI `redis`, its asyncio API).

Each call is one round trip. The compare-and-swap forms are Lua scripts that compare the stored
value's SHA-1 (`redis.sha1hex`), so a token travels once per write. A call waits at most
`timeout_s` (connect, reply, or a free connection of the bounded pool) and is not retried: a
store that does not answer is `StoreUnavailable` (UNAVAILABLE to the caller), named without its
address or password.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .core.session_store import StoreUnavailable

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 32  # concurrent store calls of one process (a drain writes many at once)

# KEYS[1]; ARGV: value, ttl ms, SHA-1 of the value it may replace
_PUT_IF = """
local current = redis.call('GET', KEYS[1])
if current and redis.sha1hex(current) ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# KEYS[1]; ARGV: SHA-1 of the value it must hold
_DELETE_IF = """
local current = redis.call('GET', KEYS[1])
if not current or redis.sha1hex(current) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""

T = TypeVar("T")


def without_password(url: str) -> str:
    """The URL as logs may show it."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisStore:
    """`core.session_store.SessionStore` over one Redis (or a proxy speaking its protocol)."""

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        self.description = without_password(url)
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._client = redis.Redis(connection_pool=pool)
        self._put_if = self._client.register_script(_PUT_IF)
        self._delete_if = self._client.register_script(_DELETE_IF)

    async def get(self, key: str) -> bytes | None:
        value = await self._call(self._client.get(key))
        return value.encode() if isinstance(value, str) else value  # bytes: no decode_responses

    async def put(
        self, key: str, value: bytes, ttl_s: float, replacing: bytes | None = None
    ) -> bool:
        ttl_ms = max(1, round(ttl_s * 1000))
        if replacing is None:
            return bool(await self._call(self._client.set(key, value, px=ttl_ms)))
        digest = hashlib.sha1(replacing).hexdigest()
        return bool(await self._call(self._put_if(keys=[key], args=[value, ttl_ms, digest])))

    async def delete(self, key: str, holding: bytes | None = None) -> bool:
        if holding is None:
            return bool(await self._call(self._client.delete(key)))
        digest = hashlib.sha1(holding).hexdigest()
        return bool(await self._call(self._delete_if(keys=[key], args=[digest])))

    async def ping(self) -> None:
        await self._call(self._client.ping())

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except (RedisError, OSError) as exc:
            log.warning("session store %s: %s: %s", self.description, type(exc).__name__, exc)
            raise StoreUnavailable(
                "the shared session store did not answer; retry (here or on another replica)"
            ) from exc
