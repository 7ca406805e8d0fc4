"""Publishing: a client's `publish` message becomes a `message` frame for a room's members."""

from __future__ import annotations

from .hub import Connection, Hub
from .protocol import ErrorCode, ProtocolError, Publish, encode

__all__ = ["Publisher", "message_frame"]


def message_frame(room: str, sender: str, data: object) -> str:
    return encode({"type": "message", "room": room, "sender": sender, "data": data})


class Publisher:
    """Handles `publish`: members only, and the sender gets its own message back.

    The echo lets a client see where its message landed in the room's order.
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def handle(self, connection: Connection, message: Publish) -> None:
        if message.room not in connection.rooms:
            raise ProtocolError(
                ErrorCode.NOT_A_MEMBER, f"join room {message.room!r} before publishing to it"
            )
        self.hub.deliver(message.room, message_frame(message.room, connection.user, message.data))
