"""SSE history in Redis: one capped Redis Stream per room, shared by every process.

The broker writes it: each message is appended (`XADD`) as it is published, which gives it its
id (`milliseconds-sequence`, increasing within the stream) and trims the stream to about
`SSE_HISTORY_SIZE` entries (redis_broker.py). Here `XRANGE` with an exclusive start reads what
a client missed. Every process reads and writes the same streams, so a client may resume on
any of them, and ids survive a restart of the service (not of a Redis without persistence).
"""

from __future__ import annotations

from redis.exceptions import RedisError

from .broker import BrokerUnavailable
from .redis_broker import RedisSettings, history_key, history_since, redis_client
from .sse import History

__all__ = ["RedisHistory"]


class RedisHistory(History):
    """Each room's recent events in a Redis Stream named the room's channel + `:history`."""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        # Reads are safe to repeat: a connection that went stale while Redis restarted is
        # replaced once, so the first resume after a recovery works.
        self._redis = redis_client(settings, retry_connection_errors=True)

    def key(self, room: str) -> str:
        return history_key(self.settings, room)

    async def since(self, room: str, last_id: str) -> list[tuple[str, str]] | None:
        try:
            return await history_since(self._redis, self.key(room), last_id)
        except (RedisError, OSError) as error:
            raise BrokerUnavailable(f"Redis did not answer: {error}") from None

    async def close(self) -> None:
        await self._redis.aclose()
