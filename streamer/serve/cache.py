"""Where parse results are kept: an LRU in this process, or Redis shared between servers.

Both have the same async ``get`` / ``put`` / ``ping`` / ``close`` and a ``stats()`` for
``/healthz``; a Redis failure is a miss, never an error for the client.

Example:
    >>> cache = MemoryCache(max_bytes=1 << 20)
    >>> asyncio.run(cache.put("k", b"entry")); asyncio.run(cache.get("k"))
    b'entry'
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading

from streamer.io.sources import redact_url

log = logging.getLogger("streamer.serve")

#: What ``stats()`` answers: numbers and the kind / URL.
CacheStats = dict[str, str | int]


class MemoryCache:
    """An LRU of cache entries bounded by their total size in bytes."""

    kind = "memory"

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._items: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0

    async def get(self, key: str) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    async def put(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._items[key] = value
            self._bytes += len(value)
            while self._bytes > self.max_bytes and self._items:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)
                self.evictions += 1

    def stats(self) -> CacheStats:
        with self._lock:
            return {"kind": self.kind, "entries": len(self._items), "bytes": self._bytes,
                    "max_bytes": self.max_bytes, "evictions": self.evictions}

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


class RedisCache:
    """Entries in Redis under ``streamer:parse:<key>`` with a TTL; a Redis failure is a miss."""

    kind = "redis"
    prefix = "streamer:parse:"

    def __init__(self, url: str, ttl_s: int) -> None:
        import redis.asyncio as aioredis

        self.url = redact_url(url)
        self.ttl_s = int(ttl_s)
        self.client = aioredis.Redis.from_url(url, socket_timeout=2.0,
                                              socket_connect_timeout=2.0)
        self.errors = 0

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self.client.get(self.prefix + key)
        except Exception as exc:
            self._failed("read", exc)
            return None
        if value is None:
            return None
        return value if isinstance(value, bytes) else str(value).encode()

    async def put(self, key: str, value: bytes) -> None:
        try:
            await self.client.set(self.prefix + key, value, ex=self.ttl_s)
        except Exception as exc:
            self._failed("write", exc)

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        log.warning("redis cache %s failed at %s: %s", what, self.url, exc)

    def stats(self) -> CacheStats:
        return {"kind": self.kind, "url": self.url, "errors": self.errors,
                "ttl_s": self.ttl_s}

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except Exception:
            return False

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()



#: The cache a :class:`~streamer.serve.service.Service` uses (``serve.redis_url`` picks Redis).
ParseCache = MemoryCache | RedisCache
