"""The JSON protocol: message envelopes with a `type`, routed to handlers.

Every message is a JSON object with a string `type`. Each feature registers the types it
handles with `Protocol.on`; a frame that is not JSON, has no known type or has the wrong fields
gets an `error` frame back and the connection lives on. The generated README documents every
type.

A client sends one message per text frame. The server may send several in one text frame, one
per line, when they are queued for a client that is behind (`HUB_BATCH_BYTES`): `encode` never
writes a raw newline (JSON escapes it in strings), so splitting a frame on "\n" is exact.

Every frame the server sends is strict JSON (RFC 8259) in valid UTF-8, whatever a client sent.
That is decided at the edge, once: `parse_json` refuses what no frame could carry on (NaN and the
infinities, lone surrogates, which UTF-8 cannot hold, nesting past `MAX_DEPTH`), and the models
refuse numbers too large for a double (`1e400` parses as inf). `encode` refuses the same, so a
gap in these checks costs one message its delivery, never the room its connections.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError
from pydantic_core import from_json

from .hub import Connection

__all__ = [
    "DEFAULT_ROOM",
    "MAX_DEPTH",
    "MAX_KEY_LENGTH",
    "CheckRoom",
    "ErrorCode",
    "ErrorReply",
    "Message",
    "Protocol",
    "ProtocolError",
    "Publish",
    "ServiceError",
    "UnencodableFrame",
    "encode",
    "error_frame",
    "only_the_default_room",
    "parse_json",
    "validated",
    "with_id",
]

# Without the rooms feature every client is in this one room; with it, a client that names no
# room when it connects joins this one.
DEFAULT_ROOM = "lobby"
# The longest publish `key` (a client's idempotency key): long enough for a UUID or a hash.
MAX_KEY_LENGTH = 128

# The deepest nesting of arrays and objects in a client's message, its envelope included (a
# frame the server sends on nests as deep: its envelope replaces the client's). 64 is the
# default limit of .NET's System.Text.Json, the lowest of the common parsers (serde_json's is
# 128, pydantic's validation 254, browsers' thousands), so every client can read every frame;
# and far deeper than real messages go. Deeper is `invalid_json`, never a RecursionError.
MAX_DEPTH = 64


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
    # The identity's grants do not let it join or publish to that room (permissions.py).
    FORBIDDEN = "forbidden"


class ErrorReply(Exception):
    """A request that failed in a way its client is told of, never a crash: an error frame
    over WebSocket, a status over HTTP. `code` is stable (clients branch on it)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class ProtocolError(ErrorReply):
    """A client mistake: a message or request the service refuses."""


class ServiceError(ErrorReply):
    """Not the client's mistake: the service could not do it now (its broker or history is
    unreachable, say); the same request may succeed later."""


class UnencodableFrame(ValueError):
    """A payload no strict JSON frame can carry (a NaN, an infinity, a lone surrogate)."""


class Message(BaseModel):
    """Base of every inbound message: unknown fields are a mistake, not noise, and a number
    out of a double's range (`1e400`, parsed as inf) has no JSON form to send on."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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
B = TypeVar("B", bound=BaseModel)
Handler = Callable[[Connection, Any], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Route:
    model: type[Message]
    handler: Handler


def encode(payload: dict[str, object]) -> str:
    """The one way frames are encoded: compact JSON, UTF-8 left as is.

    Raises UnencodableFrame rather than return what is not strict JSON in UTF-8, which every
    send path would fail on, each member of a room in turn. Once per message, not per client.
    """
    try:
        frame = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        if not frame.isascii():  # O(1); only text beyond ASCII can hold a lone surrogate
            frame.encode()
    except ValueError as error:  # NaN or an infinity; UnicodeEncodeError: a lone surrogate
        raise UnencodableFrame(str(error)) from None
    return frame


def error_frame(code: str, detail: str) -> str:
    # A detail may quote a client's input: what UTF-8 cannot hold is escaped, never refused.
    if not detail.isascii():
        detail = detail.encode(errors="backslashreplace").decode()
    return encode({"type": "error", "code": str(code), "detail": detail})


def parse_json(text: str | bytes) -> Any:
    """A client's JSON, or ProtocolError(INVALID_JSON): the one parser of every inbound message.

    Strict: refuses NaN and the infinities, lone surrogates (escaped, `"\\ud800"`, or not),
    bytes that are not UTF-8, and nesting deeper than MAX_DEPTH, besides what is not JSON.
    In one pass, pydantic-core's parser (3x faster than `json.loads` on a small frame); only a
    frame with more than MAX_DEPTH opening brackets has its nesting measured after it.
    """
    try:
        if isinstance(text, bytes):
            text = text.decode()
        payload = from_json(text, allow_inf_nan=False)
    except ValueError as error:  # UnicodeDecodeError too
        raise ProtocolError(ErrorCode.INVALID_JSON, f"not valid JSON: {error}") from None
    except TypeError:  # a str holding a lone surrogate, which no UTF-8 frame can have brought
        raise ProtocolError(ErrorCode.INVALID_JSON, "not valid JSON: a lone surrogate") from None
    # Nesting d levels takes 2d brackets: a short frame cannot be too deep.
    if (
        len(text) > 2 * MAX_DEPTH
        and text.count("[") + text.count("{") > MAX_DEPTH
        and _deeper_than(payload, MAX_DEPTH)
    ):
        raise ProtocolError(
            ErrorCode.INVALID_JSON, f"not valid JSON: nested deeper than {MAX_DEPTH} levels"
        )
    return payload


def _deeper_than(value: object, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` levels deep in `value`, level by
    level: no recursion, however deep."""
    level: list[Any] = [value] if isinstance(value, dict | list) else []
    for _ in range(limit):
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True


def validated(model: type[B], payload: object) -> B:
    """`payload` as a `model`, or ProtocolError(INVALID_FIELDS) naming each problem."""
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, item['loc'])) or 'message'}: {item['msg']}"
            for item in error.errors(include_url=False)
        )
        raise ProtocolError(ErrorCode.INVALID_FIELDS, problems) from None


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
        payload = parse_json(text)
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
        return validated(route.model, payload), route.handler


# Raises ProtocolError unless a room name is valid: the rooms feature's rule when it is chosen
# (rooms.RoomNames), else this one's. Every route that takes a room name checks it alike.
CheckRoom = Callable[[str], None]


def only_the_default_room(room: str) -> None:
    """Without the rooms feature there is one broadcast channel."""
    if room != DEFAULT_ROOM:
        raise ProtocolError("invalid_room", f"this service has one room, {DEFAULT_ROOM!r}")
