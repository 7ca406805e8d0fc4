"""The history: each room's recent messages under their event ids, and a client's cursor.

The broker records every message as it publishes it (`LocalBroker` with `LocalHistory` here;
`RedisBroker` with `history_redis.RedisHistory`), so the id travels inside the frame to every
subscriber, WebSocket and SSE alike. A reader that was away (an SSE stream resuming from its
`Last-Event-ID`) asks for what it missed after its cursor: the last id it saw in each room.
A history exists only when a feature reads it (`Provided.history_size`, feature.py): recording
costs a write per message.
"""

from __future__ import annotations

import abc
import re
import time
from collections import deque
from urllib.parse import parse_qsl

__all__ = [
    "EVENT_ID",
    "UNKNOWN_POSITION",
    "History",
    "LocalHistory",
    "order",
    "parse_cursor",
]

# An event id, as both histories write them: `epoch-n` here, `milliseconds-sequence` in Redis.
EVENT_ID = re.compile(r"[0-9]+-[0-9]+")
# Where a client is in a room when its `Last-Event-ID` could not be read: it gets a resync.
UNKNOWN_POSITION = ""


class History(abc.ABC):
    """Each room's recent messages, each under the event id it got once, as it was published.

    The broker records every message as it publishes it (LocalBroker's stamp is
    `LocalHistory.append`; with Redis, Redis records it), so the id travels inside the frame to
    every subscriber. Ids are strings, increasing within a room.
    """

    @abc.abstractmethod
    async def since(self, room: str, last_id: str) -> list[tuple[str, str]] | None:
        """The events of `room` after `last_id`, oldest first, as (id, frame without id).

        None when `last_id` is not in the history any more, or never was: the client must
        resync, since some events it missed are gone.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Release connections."""


class LocalHistory(History):
    """This process only, in memory: one bounded deque per room, ids counted from 1.

    Lost on restart, and not shared between processes: ids are `epoch-n`, the epoch being
    when this history began, so an id from another life or process is unknown (resync).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._events: dict[str, deque[tuple[int, str]]] = {}
        self._last: dict[str, int] = {}
        # Ids of an earlier life of this process (or another process) never match.
        self._epoch = str(time.time_ns() // 1000)

    def append(self, room: str, frame: str) -> str:
        """Record `frame` (without its id) as the room's newest event; return its id."""
        number = self._last.get(room, 0) + 1
        self._last[room] = number
        events = self._events.get(room)
        if events is None:
            events = self._events[room] = deque(maxlen=self.size)
        events.append((number, frame))
        return f"{self._epoch}-{number}"

    async def since(self, room: str, last_id: str) -> list[tuple[str, str]] | None:
        epoch, _, number_text = last_id.rpartition("-")
        if epoch != self._epoch or not number_text.isdigit():
            return None
        number = int(number_text)
        last = self._last.get(room, 0)
        events = self._events.get(room)
        if number > last:
            return None
        if number == last:
            return []
        # Known only if the event right after it is still held.
        if events is None or events[0][0] > number + 1:
            return None
        return [(f"{self._epoch}-{n}", frame) for n, frame in events if n > number]


def order(event_id: str) -> tuple[int, ...]:
    """Sort key of an id: `epoch-n` here, `milliseconds-sequence` in Redis."""
    return tuple(int(part) for part in event_id.split("-") if part.isdigit())


def parse_cursor(value: str | None, rooms: list[str]) -> dict[str, str]:
    """A `Last-Event-ID` as room to last id, for a stream of `rooms`.

    A cursor is `room=id` pairs, each room one of the stream's and named once, each id an event
    id (`digits-digits`, the format of both histories). Anything else (`garbage`, `r=`, the
    rooms of another stream) says nothing of where the client is: every room is then at
    `UNKNOWN_POSITION`, and the stream starts with a `resync` for all of them, never silence.
    """
    if not value:
        return {}
    try:
        pairs = parse_qsl(
            value, keep_blank_values=True, strict_parsing=True, max_num_fields=len(rooms)
        )
    except ValueError:
        pairs = []
    cursor = dict(pairs)
    if (
        pairs
        and len(cursor) == len(pairs)
        and all(room in rooms and EVENT_ID.fullmatch(last_id) for room, last_id in pairs)
    ):
        return cursor
    return dict.fromkeys(rooms, UNKNOWN_POSITION)
