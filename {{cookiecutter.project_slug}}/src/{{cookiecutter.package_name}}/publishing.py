"""Publishing: a client's `publish` message becomes a `message` frame for a room's members."""

from __future__ import annotations

import functools
import logging

from starlette import status

from .broker import Broker, Sent
from .hub import Connection
from .metrics import MESSAGES_PUBLISHED
from .permissions import require_publish
from .protocol import ErrorCode, ProtocolError, Publish, UnencodableFrame, encode, error_frame

__all__ = ["Publisher", "message_frame", "scoped_key"]

logger = logging.getLogger(__name__)


def message_frame(room: str, sender: str, data: object, key: str | None = None) -> str:
    payload: dict[str, object] = {"type": "message", "room": room, "sender": sender, "data": data}
    if key is not None:
        payload["key"] = key  # the sender's own id for it: how it recognises its echo
    return encode(payload)


def scoped_key(sender: str, key: str | None) -> str | None:
    """A publish key as the broker records it: per sender, so that nobody can use another
    user's keys to suppress their messages. JSON, so that no two (sender, key) pairs meet."""
    return None if key is None else encode({"u": sender, "k": key})


class Publisher:
    """Handles `publish`: members only, and the sender gets its own message back.

    The echo lets a client see where its message landed in the room's order. The broker
    carries the message to the members here and in every other process, and gives it its
    event id when the SSE feature keeps a history.
    """

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def handle(self, connection: Connection, message: Publish) -> None:
        # First: joining would not help a client that may never publish there.
        require_publish(connection.grants, message.room)
        if message.room not in connection.rooms:
            raise ProtocolError(
                ErrorCode.NOT_A_MEMBER, f"join room {message.room!r} before publishing to it"
            )
        frame = _frame_or_refuse(
            message.room, connection.user, message.data, message.key, connection
        )
        MESSAGES_PUBLISHED.inc()
        sent = self.broker.publish(message.room, frame, scoped_key(connection.user, message.key))
        # Not awaited: the sender's next message is read while this one travels (with Redis,
        # all that are waiting go in one round trip). A failure still reaches the sender.
        sent.add_done_callback(functools.partial(_report_failure, connection))

    async def publish(
        self, room: str, sender: str, data: object, key: str | None = None
    ) -> str | None:
        """Send a message to every member of `room`; return its event id, if it has one."""
        frame = _frame_or_refuse(room, sender, data, key, f"POST /publish by {sender!r}")
        MESSAGES_PUBLISHED.inc()
        return await self.broker.publish(room, frame, scoped_key(sender, key))


def _frame_or_refuse(
    room: str, sender: str, data: object, key: str | None, publisher: object
) -> str:
    """The message's frame; if it has none, the publisher alone hears of it, before the broker
    or any member sees anything. Logged: the edge (`parse_json`) should have refused it."""
    try:
        return message_frame(room, sender, data, key)
    except UnencodableFrame as error:
        logger.warning("refused a publish from %s with no strict JSON frame: %s", publisher, error)
        raise ProtocolError(
            ErrorCode.INVALID_JSON, f"the message has no strict JSON form: {error}"
        ) from None


def _report_failure(connection: Connection, sent: Sent) -> None:
    if sent.cancelled() or (error := sent.exception()) is None:
        return
    if isinstance(error, ProtocolError):
        connection.offer(error_frame(error.code, error.detail))
    else:  # a bug, as when a handler fails (endpoint.py)
        logger.error("publish from %r failed", connection, exc_info=error)
        connection.close(status.WS_1011_INTERNAL_ERROR, "internal error")
