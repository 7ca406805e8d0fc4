"""Publishing: a client's `publish` message becomes a `message` frame for a room's members."""

from __future__ import annotations

from .broker import Broker
from .hub import Connection
from .protocol import ErrorCode, ProtocolError, Publish, encode

__all__ = ["Publisher", "message_frame"]


def message_frame(room: str, sender: str, data: object) -> str:
    return encode({"type": "message", "room": room, "sender": sender, "data": data})


class Publisher:
    """Handles `publish`: members only, and the sender gets its own message back.

    The echo lets a client see where its message landed in the room's order. The broker
    carries the message to the members here and in every other process.
    """

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def handle(self, connection: Connection, message: Publish) -> None:
        if message.room not in connection.rooms:
            raise ProtocolError(
                ErrorCode.NOT_A_MEMBER, f"join room {message.room!r} before publishing to it"
            )
        frame = message_frame(message.room, connection.user, message.data)
        await self.broker.publish(message.room, frame)
