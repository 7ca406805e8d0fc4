"""SSE history in Redis: one capped Redis Stream per room, shared by every process.

The broker writes it: each message is appended (`XADD`) as it is published, which gives it its
id (`milliseconds-sequence`, increasing within the stream) and trims the stream to about
`SSE_HISTORY_SIZE` entries (redis_broker.py). Here `XRANGE` with an exclusive start reads what
a client missed. Every process reads and writes the same streams, so a client may resume on
any of them, and ids survive a restart of the service (not of a Redis without persistence).
"""

from __future__ import annotations

from typing import cast

from redis.exceptions import RedisError, ResponseError

from .broker import BrokerUnavailable
from .redis_broker import HISTORY_FIELD, RedisSettings, history_key, redis_client
from .sse import History

__all__ = ["RedisHistory"]


class RedisHistory(History):
    """Each room's recent events in a Redis Stream named the room's channel + `:history`."""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self._redis = redis_client(settings)

    def key(self, room: str) -> str:
        return history_key(self.settings, room)

    async def since(self, room: str, last_id: str) -> list[tuple[str, str]] | None:
        key = self.key(room)
        try:
            # The entry itself, if still there, proves nothing was trimmed after it.
            anchor = await self._redis.xrange(key, min=last_id, max=last_id, count=1)
            if not anchor:
                return None
            # decode_responses: ids and fields are str, whatever the stubs say.
            entries = cast(
                list[tuple[str, dict[str, str]]],
                await self._redis.xrange(key, min=f"({last_id}", max="+"),
            )
        except ResponseError:
            return None  # not a stream id at all
        except (RedisError, OSError) as error:
            raise BrokerUnavailable(f"Redis did not answer: {error}") from None
        return [(entry_id, fields[HISTORY_FIELD]) for entry_id, fields in entries]

    async def close(self) -> None:
        await self._redis.aclose()
