"""Presence across processes: each process shares its counts of each room through Redis.

Per room, two keys: a hash of process id to that process's counts (JSON, user to
connections), and a sorted set of process id to the moment its entry expires, on Redis's own
clock (no two hosts' clocks are compared). A process writes a room's entry soon after its
counts change and rewrites every entry every `refresh_seconds`, each time pushing its expiry
to `3 * refresh_seconds` ahead. A reader takes only the entries that have not expired, so the
members of a process that dies without a word (SIGKILL) vanish from every answer at most
`3 * refresh_seconds` after its last write; the next write to the room deletes them, and both
keys expire when no process writes to them any more. A process that stops cleanly deletes its
entries at once.

A write is a whole snapshot, never an increment, so writing twice or late never miscounts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
from typing import cast

from .broker import Broker
from .presence import Counts, PresenceSettings, PresenceStore
from .redis_broker import RedisBroker, RedisSettings, redis_client

__all__ = ["RedisPresence"]

logger = logging.getLogger(__name__)

# KEYS: entries (hash), expiries (sorted set). ARGV: process id, its counts as JSON ("" to
# delete its entry), time to live in ms. Expired entries go too, so that dead processes'
# counts do not pile up in a room that lives on.
WRITE_SCRIPT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ttl = tonumber(ARGV[3])
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
end
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('HDEL', KEYS[1], dead)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
"""

# KEYS: entries, expiries. Returns process id, counts, process id, counts... of the live ones.
READ_SCRIPT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local out = {}
for _, process in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf')) do
  local counts = redis.call('HGET', KEYS[1], process)
  if counts then
    out[#out + 1] = process
    out[#out + 1] = counts
  end
end
return out
"""


class RedisPresence(PresenceStore):
    """This process's counts, written to Redis; the other processes' counts, read from it."""

    def __init__(self, settings: RedisSettings, refresh_seconds: float) -> None:
        self.settings = settings
        self.refresh_seconds = refresh_seconds
        self.ttl_ms = max(1, round(3 * refresh_seconds * 1000))
        # Unique even when a process id is reused after a restart.
        tag = secrets.token_hex(4)
        self.process = f"{socket.gethostname()}:{os.getpid()}:{tag}"
        self.scope = f"@{tag}"
        self.shared = True
        self._client = redis_client(settings, retry_connection_errors=True)
        # The live count dicts of this process's rooms (the Presence's own, not copies): an
        # emptied one means the room is gone here, and its entry is deleted.
        self._rooms: dict[str, Counts] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _keys(self, room: str) -> tuple[str, str]:
        base = f"{self.settings.channel_prefix}{room}:presence"
        return base, f"{base}:alive"

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"Expected a stopped presence writer, got {self._task!r}")
        self._task = asyncio.create_task(self._run(), name="presence-writer")

    def changed(self, room: str, counts: Counts) -> None:
        self._rooms[room] = counts
        self._dirty.add(room)
        self._wake.set()

    async def others(self, room: str) -> list[Counts]:
        reply = cast(list[str], await self._client.eval(READ_SCRIPT, 2, *self._keys(room)))
        return [
            json.loads(counts)
            for process, counts in zip(reply[::2], reply[1::2], strict=True)
            if process != self.process
        ]

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # Bounded: a write that redis-py does not abandon at once must not hold shutdown.
            await asyncio.wait((task,), timeout=self.settings.publish_timeout_seconds)
        # Leave no entry behind for others to wait out: best effort, bounded by the timeouts.
        try:
            await self._write([(room, "") for room in self._rooms])
        except Exception as error:
            logger.warning("presence entries left to expire: %r", error)
        self._rooms.clear()
        await self._client.aclose()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_refresh = loop.time()
        while True:
            # timeout_at, not wait_for: in Python 3.11 wait_for can swallow a cancellation that
            # arrives as the wait ends, and this loop would outlive `close`.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(next_refresh):
                    await self._wake.wait()
            self._wake.clear()
            if loop.time() >= next_refresh:
                rooms = set(self._rooms)
                next_refresh = loop.time() + self.refresh_seconds
            else:
                rooms = self._dirty & set(self._rooms)
            self._dirty.clear()
            snapshot = [(room, _encoded(self._rooms[room])) for room in rooms]
            try:
                await self._write(snapshot)
            except Exception as error:
                logger.warning("presence not written to Redis: %r", error)
                self._dirty.update(rooms)
                await asyncio.sleep(min(1.0, self.refresh_seconds))
                self._wake.set()
                continue
            for room, counts in snapshot:
                if not counts and not self._rooms.get(room, True):
                    del self._rooms[room]

    async def _write(self, snapshot: list[tuple[str, str]]) -> None:
        if not snapshot:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for room, counts in snapshot:
                pipe.eval(WRITE_SCRIPT, 2, *self._keys(room), self.process, counts, self.ttl_ms)
            await pipe.execute()


def _encoded(counts: Counts) -> str:
    return json.dumps(counts, separators=(",", ":")) if counts else ""


def redis_presence(broker: Broker, settings: PresenceSettings) -> PresenceStore | None:
    """The store that shares presence through the Redis the broker uses; None (this process
    alone) when the broker is not Redis (`BROKER_URL=memory://`)."""
    if not isinstance(broker, RedisBroker):
        return None
    return RedisPresence(broker.settings, settings.refresh_seconds)
