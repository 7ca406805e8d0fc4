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

from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError
from pydantic_core import from_json

from .hub import Connection

__all__ = [
    "DEFAULT_ROOM",
    "MAX_DEPTH",
    "ErrorCode",
    "Message",
    "Protocol",
    "ProtocolError",
    "Publish",
    "UnencodableFrame",
    "encode",
    "error_frame",
    "parse_json",
    "validated",
    "with_id",
]

# Without the rooms feature every client is in this one room; with it, a client that names no
# room when it connects joins this one.
DEFAULT_ROOM = "lobby"

# The deepest nesting of arrays and objects a client's JSON may have. It is the limit of the
# parser (pydantic-core's), which counts while it parses, so the check costs nothing (a lower one
# of our own would cost a second look at every frame); test_protocol pins it. Far deeper than any
# real message, and shallower than what the server's own code and any client's parser handle
# (pydantic validates 254 levels, Python's json module about 1,000, browsers thousands).
MAX_DEPTH = 200


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


class UnencodableFrame(ValueError):
    """A payload no strict JSON frame can carry (a NaN, an infinity, a lone surrogate)."""


class Message(BaseModel):
    """Base of every inbound message: unknown fields are a mistake, not noise, and a number
    out of a double's range (`1e400`, parsed as inf) has no JSON form to send on."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Publish(Message):
    """Send `data` to everyone in `room` (the sender included), if the sender is a member."""

    type: Literal["publish"]
    data: JsonValue
    room: str = DEFAULT_ROOM


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

    Strict, in one pass: refuses NaN and the infinities, lone surrogates (escaped, `"\\ud800"`,
    or not), bytes that are not UTF-8, and nesting deeper than MAX_DEPTH, besides what is not
    JSON at all. Also faster than `json.loads` (pydantic-core's parser, in Rust).
    """
    try:
        return from_json(text, allow_inf_nan=False)
    except ValueError as error:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"not valid JSON: {error}") from None
    except TypeError:  # a str holding a lone surrogate, which no UTF-8 frame can have brought
        raise ProtocolError(ErrorCode.INVALID_JSON, "not valid JSON: a lone surrogate") from None


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
