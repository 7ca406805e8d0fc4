"""The JSON protocol: message envelopes with a `type`, routed to handlers.

Every message is a JSON object with a string `type`. Each feature registers the types it
handles with `Protocol.on`; a frame that is not JSON, has no known type or has the wrong fields
gets an `error` frame back and the connection lives on. The generated README documents every
type.

A client sends one message per text frame. The server may send several in one text frame, one
per line, when they are queued for a client that is behind (`HUB_BATCH_BYTES`): `encode` never
writes a raw newline (JSON escapes it in strings), so splitting a frame on "\n" is exact.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from .hub import Connection

__all__ = [
    "DEFAULT_ROOM",
    "MAX_KEY_LENGTH",
    "ErrorCode",
    "Message",
    "Protocol",
    "ProtocolError",
    "Publish",
    "encode",
    "error_frame",
    "with_id",
]

# Without the rooms feature every client is in this one room; with it, a client that names no
# room when it connects joins this one.
DEFAULT_ROOM = "lobby"
# The longest publish `key` (a client's idempotency key): long enough for a UUID or a hash.
MAX_KEY_LENGTH = 128


class ErrorCode(enum.StrEnum):
    """The `code` of an error frame. Clients may rely on these staying stable.

    A feature adds its own codes the same way (a StrEnum of its own), next to its handlers.
    """

    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_FIELDS = "invalid_fields"
    BINARY_NOT_SUPPORTED = "binary_not_supported"
    NOT_A_MEMBER = "not_a_member"


class ProtocolError(Exception):
    """A client mistake: answered with an error frame, never a crash."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class Message(BaseModel):
    """Base of every inbound message: unknown fields are a mistake, not noise."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Publish(Message):
    """Send `data` to everyone in `room` (the sender included), if the sender is a member.

    `key`: the sender's own id for the message (an idempotency key); a publish with the key of
    one of its messages published in the room within `PUBLISH_KEY_WINDOW_SECONDS` is not sent.
    """

    type: Literal["publish"]
    data: JsonValue
    room: str = DEFAULT_ROOM
    key: str | None = Field(default=None, min_length=1, max_length=MAX_KEY_LENGTH)


M = TypeVar("M", bound=Message)
Handler = Callable[[Connection, Any], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Route:
    model: type[Message]
    handler: Handler


def encode(payload: dict[str, object]) -> str:
    """The one way frames are encoded: compact JSON, UTF-8 left as is."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def error_frame(code: str, detail: str) -> str:
    return encode({"type": "error", "code": str(code), "detail": detail})


def with_id(frame: str, event_id: str) -> str:
    """The frame with `"id"` as its first field: the same string live and replayed."""
    return '{"id":' + json.dumps(event_id) + "," + frame[1:]


class Protocol:
    """Message types and their handlers."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}

    @property
    def types(self) -> list[str]:
        return sorted(self._routes)

    def on(
        self,
        message_type: str,
        model: type[M],
        handler: Callable[[Connection, M], Awaitable[None]],
    ) -> None:
        if message_type in self._routes:
            raise ValueError(f"Expected one handler for {message_type!r}, got a second")
        self._routes[message_type] = Route(model, handler)

    def decode(self, text: str) -> tuple[Message, Handler]:
        """Parse and validate one frame, or raise ProtocolError saying what is wrong."""
        try:
            payload = json.loads(text)
        except ValueError as error:
            raise ProtocolError(ErrorCode.INVALID_JSON, f"not valid JSON: {error}") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE, 'expected a JSON object with a string "type"'
            )
        route = self._routes.get(payload["type"])
        if route is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_TYPE,
                f"unknown type {payload['type']!r}; expected one of {', '.join(self.types)}",
            )
        try:
            message = route.model.model_validate(payload)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(map(str, item['loc'])) or 'message'}: {item['msg']}"
                for item in error.errors(include_url=False)
            )
            raise ProtocolError(ErrorCode.INVALID_FIELDS, problems) from None
        return message, route.handler
