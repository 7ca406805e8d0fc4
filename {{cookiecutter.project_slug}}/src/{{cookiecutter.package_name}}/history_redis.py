"""The history in Redis, shared by every process: each room's recent messages in a capped
Redis Stream named the room's channel + `:history`.

The broker writes it as it publishes (`redis_broker.PUBLISH_SCRIPT`: XADD, which gives each
message its id, `milliseconds-sequence`, and trims the stream to about the history size);
`RedisHistory.since` reads what a client missed (XRANGE with an exclusive start), and the
broker reads it too, to fill the gap an outage of pub/sub left. Ids survive a restart of the
service (not of a Redis without persistence). `LocalHistory` (history.py) is the same
interface in one process.
"""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from .broker import BrokerUnavailable
from .history import History

__all__ = ["HISTORY_FIELD", "RedisHistory", "history_key", "history_since", "stream_order"]

# The field of a history stream entry that holds the frame (without its id).
HISTORY_FIELD = "frame"


def history_key(channel_prefix: str, room: str) -> str:
    """The Redis Stream holding a room's history."""
    return f"{channel_prefix}{room}:history"


def stream_order(event_id: str) -> tuple[int, int] | None:
    """The sort key of a Redis Stream id, None if it is not one."""
    milliseconds, _, sequence = event_id.partition("-")
    if not (milliseconds.isdigit() and sequence.isdigit()):
        return None
    return int(milliseconds), int(sequence)


async def history_since(
    client: Redis, key: str, last_id: str | None
) -> list[tuple[str, str]] | None:
    """The entries of a history stream after `last_id` (None: all of them), oldest first, as
    (id, frame), or None if `last_id` is not in it (trimmed, never there, or not a stream id):
    the reader has a gap it must be told about. Redis errors are the caller's."""
    try:
        start = "-"
        if last_id is not None:
            # The entry itself, if still there, proves nothing was trimmed after it.
            anchor = await client.xrange(key, min=last_id, max=last_id, count=1)
            if not anchor:
                return None
            start = f"({last_id}"
        # decode_responses: ids and fields are str, whatever the stubs say.
        entries = cast(
            list[tuple[str, dict[str, str]]],
            await client.xrange(key, min=start, max="+"),
        )
    except ResponseError:
        return None  # not a stream id at all
    return [(entry_id, fields[HISTORY_FIELD]) for entry_id, fields in entries]


class RedisHistory(History):
    """`History` over the rooms' streams, read with its own client (one that retries a command
    once on a broken connection: reads are safe to repeat)."""

    def __init__(self, client: Redis, channel_prefix: str) -> None:
        self._redis = client
        self._channel_prefix = channel_prefix

    def key(self, room: str) -> str:
        return history_key(self._channel_prefix, room)

    async def since(self, room: str, last_id: str) -> list[tuple[str, str]] | None:
        try:
            return await history_since(self._redis, self.key(room), last_id)
        except (RedisError, OSError) as error:
            raise BrokerUnavailable(f"Redis did not answer: {error}") from None

    async def close(self) -> None:
        await self._redis.aclose()
