"""Publishing: a client's `publish` message becomes a `message` frame for a room's members."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from .broker import Broker
from .hub import Connection
from .protocol import ErrorCode, ProtocolError, Publish, encode

__all__ = ["Publisher", "Stamp", "message_frame", "with_id"]

# Records a frame as a room's newest event and returns its id (the SSE feature's history).
Stamp = Callable[[str, str], Awaitable[str]]


def message_frame(room: str, sender: str, data: object) -> str:
    return encode({"type": "message", "room": room, "sender": sender, "data": data})


def with_id(frame: str, event_id: str) -> str:
    """The frame with `"id"` as its first field: the same string live and replayed."""
    return '{"id":' + json.dumps(event_id) + "," + frame[1:]


class Publisher:
    """Handles `publish`: members only, and the sender gets its own message back.

    The echo lets a client see where its message landed in the room's order. The broker
    carries the message to the members here and in every other process. With a `stamp`, each
    message first gets its event id, once, which travels in the frame as `"id"`, so every
    subscriber, WebSocket or SSE, in every process, sees the same id.
    """

    def __init__(self, broker: Broker, stamp: Stamp | None = None) -> None:
        self.broker = broker
        self.stamp = stamp

    async def handle(self, connection: Connection, message: Publish) -> None:
        if message.room not in connection.rooms:
            raise ProtocolError(
                ErrorCode.NOT_A_MEMBER, f"join room {message.room!r} before publishing to it"
            )
        await self.publish(message.room, connection.user, message.data)

    async def publish(self, room: str, sender: str, data: object) -> str | None:
        """Send a message to every member of `room`; return its event id, if stamped."""
        frame = message_frame(room, sender, data)
        event_id = None
        if self.stamp is not None:
            event_id = await self.stamp(room, frame)
            frame = with_id(frame, event_id)
        await self.broker.publish(room, frame)
        return event_id
