"""Publishing: a client's `publish` message, or a `POST /publish`, becomes a `message` frame for
a room's members, through the broker."""

from __future__ import annotations

import functools
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, JsonValue, WithJsonSchema
from starlette import status

from .broker import AlreadyPublished, Broker, PublishOutcomeUnknown, Sent
from .hub import Connection
from .identity import IdentifyRequest, Identity, forbid_unless
from .metrics import MESSAGES_PUBLISHED
from .permissions import require_publish
from .protocol import (
    DEFAULT_ROOM,
    MAX_KEY_LENGTH,
    CheckRoom,
    ErrorCode,
    ErrorReply,
    ProtocolError,
    Publish,
    UnencodableFrame,
    encode,
    error_frame,
    parse_json,
    validated,
)

__all__ = [
    "PublishBody",
    "Publisher",
    "check_room_or_422",
    "message_frame",
    "publish_router",
    "scoped_key",
]

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
    if isinstance(error, ErrorReply):
        connection.offer(error_frame(error.code, error.detail))
    else:  # a bug, as when a handler fails (endpoint.py)
        logger.error("publish from %r failed", connection, exc_info=error)
        connection.close(status.WS_1011_INTERNAL_ERROR, "internal error")


class PublishBody(BaseModel):
    """The body of `POST /publish`, refused exactly where a WebSocket `publish` would be."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # Any JSON value; its schema inline, as OpenAPI cannot refer to JsonValue's `$defs` entry.
    data: Annotated[JsonValue, WithJsonSchema({})]
    room: str = DEFAULT_ROOM
    key: str | None = Field(default=None, min_length=1, max_length=MAX_KEY_LENGTH)

    @classmethod
    def parse(cls, body: bytes) -> PublishBody:
        """The body read by the WebSocket's parser (protocol.py), not FastAPI's `json.loads`,
        which takes NaN and lone surrogates, and whose 422 for `1e400` fails to render (500)."""
        return validated(cls, parse_json(body))


# FastAPI documents only the bodies it parses itself.
_PUBLISH_BODY_DOCS = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PublishBody.model_json_schema()}},
    }
}


def check_room_or_422(check_room: CheckRoom, room: str) -> None:
    """An HTTP route's room check: a 422 where a WebSocket client would get an error frame."""
    try:
        check_room(room)
    except ProtocolError as error:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"{error.code}: {error.detail}"
        ) from None


def publish_router(
    publisher: Publisher, identify: IdentifyRequest, check_room: CheckRoom
) -> APIRouter:
    """`POST /publish`: a message sent over plain HTTP, refused exactly where a WebSocket
    `publish` would be."""
    router = APIRouter(tags=["publish"])

    @router.post("/publish", openapi_extra=_PUBLISH_BODY_DOCS)
    async def publish(
        request: Request, identity: Identity = Depends(identify)
    ) -> dict[str, object]:
        try:
            body = PublishBody.parse(await request.body())
        except ProtocolError as error:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, f"{error.code}: {error.detail}"
            ) from None
        check_room_or_422(check_room, body.room)
        forbid_unless(require_publish, identity, body.room)
        try:
            event_id = await publisher.publish(body.room, identity.user, body.data, body.key)
        except AlreadyPublished as duplicate:  # a retry: done already, and not again
            return {"room": body.room, "id": duplicate.event_id, "duplicate": True}
        except ErrorReply as error:
            # 422: no frame can carry it; 503: not sent, try again; 504: sent, fate
            # unknown, retry with the same key.
            code = status.HTTP_503_SERVICE_UNAVAILABLE
            if error.code == ErrorCode.INVALID_JSON:
                code = status.HTTP_422_UNPROCESSABLE_CONTENT
            elif isinstance(error, PublishOutcomeUnknown):
                code = status.HTTP_504_GATEWAY_TIMEOUT
            raise HTTPException(code, f"{error.code}: {error.detail}") from None
        return {"room": body.room, "id": event_id}

    return router
