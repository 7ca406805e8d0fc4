"""SSE history in Redis: one capped Redis Stream per room, shared by every process.

`XADD` gives each message its id (`milliseconds-sequence`, increasing within the stream) and
trims the stream to about `SSE_HISTORY_SIZE` entries; `XRANGE` with an exclusive start reads
what a client missed. Every process reads and writes the same streams, so a client may resume
on any of them, and ids survive a restart of the service (not of a Redis without persistence).
"""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from .broker import BrokerUnavailable
from .redis_broker import RedisSettings
from .sse import History

__all__ = ["RedisHistory"]

# The field of a stream entry that holds the frame.
FRAME = "frame"


class RedisHistory(History):
    """Each room's recent events in a Redis Stream named the room's channel + `:history`."""

    def __init__(self, settings: RedisSettings, size: int) -> None:
        self.settings = settings
        self.size = size
        self._redis = Redis.from_url(
            settings.url,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=settings.publish_timeout_seconds,
            socket_timeout=settings.publish_timeout_seconds,
        )

    def key(self, room: str) -> str:
        return f"{self.settings.channel_prefix}{room}:history"

    async def append(self, room: str, frame: str) -> str:
        try:
            # Trimming is approximate (~), which Redis does cheaply in whole nodes; `since`
            # checks the real oldest id, so a client never gets a gap it is not told about.
            event_id = await self._redis.xadd(
                self.key(room), {FRAME: frame}, maxlen=self.size, approximate=True
            )
        except (RedisError, OSError) as error:
            raise BrokerUnavailable(f"Redis refused the message: {error}") from None
        return str(event_id)

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
        return [(entry_id, fields[FRAME]) for entry_id, fields in entries]

    async def close(self) -> None:
        await self._redis.aclose()
