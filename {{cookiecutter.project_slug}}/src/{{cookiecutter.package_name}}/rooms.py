"""Rooms: a client joins and leaves many rooms over one connection.

A client names its first rooms when it connects (`/ws?room=a&room=b`; none named means the
default room) and then sends `join` and `leave`, each acknowledged with `joined` or `left`.
A client that was away resumes: `join` with `since` (the last event id it saw in the room), or
`?since=` on the URL for the rooms it connects to (history.parse_since); it gets what it
missed, in order, then the live messages, or a `resync` (history.Recovery).
Names are checked against a pattern and a length, and a connection's rooms are capped; a
refused join gets an error frame and the connection lives on. Membership itself lives in the
Hub, which frees a room when its last member leaves or disconnects.
"""

from __future__ import annotations

import enum
import re
from typing import Literal

from fastapi import WebSocket
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .feature import Core, Feature
from .history import parse_since
from .hub import Connection
from .permissions import require_join
from .protocol import (
    DEFAULT_ROOM,
    ErrorCode,
    Message,
    Protocol,
    ProtocolError,
    encode,
    error_frame,
)

__all__ = ["Join", "Leave", "RoomErrorCode", "RoomNames", "RoomSettings", "Rooms"]


class RoomErrorCode(enum.StrEnum):
    INVALID_ROOM = "invalid_room"
    TOO_MANY_ROOMS = "too_many_rooms"


class RoomSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROOMS_", env_file=".env", extra="ignore")

    max_rooms_per_connection: int = Field(default=32, ge=1)
    max_name_length: int = Field(default=64, ge=1)
    # Letters, digits and a few separators: safe in URLs, logs and Redis channel names.
    name_pattern: str = r"[A-Za-z0-9_.:-]+"


class Join(Message):
    type: Literal["join"]
    room: str
    # The last event id the client saw in the room: it gets every message after it first (or
    # a `resync`). Ignored when the client is a member already: it has the live messages.
    since: str | None = Field(default=None, max_length=64)


class Leave(Message):
    type: Literal["leave"]
    room: str


class RoomNames:
    """Which room names are valid: the rule every route that takes a room name applies
    (`Provided.check_room`, feature.py), the `/sse` and `/publish` routes too."""

    def __init__(self, settings: RoomSettings) -> None:
        self.settings = settings
        self._name = re.compile(settings.name_pattern)

    def check(self, room: str) -> None:
        """Raise ProtocolError unless `room` is a valid room name."""
        limit = self.settings.max_name_length
        if not 0 < len(room) <= limit or not self._name.fullmatch(room):
            raise ProtocolError(
                RoomErrorCode.INVALID_ROOM,
                f"room names are 1-{limit} characters matching {self.settings.name_pattern}",
            )


class Rooms(Feature):
    """The `join` and `leave` handlers, and the rooms named at connect time."""

    name = "rooms"

    def __init__(self, core: Core, settings: RoomSettings) -> None:
        self.hub = core.hub
        self.recovery = core.recovery
        self.settings = settings
        self.check_name = core.check_room

    def register(self, protocol: Protocol) -> None:
        protocol.on("join", Join, self.join)
        protocol.on("leave", Leave, self.leave)

    def on_open(self, connection: Connection, websocket: WebSocket) -> None:
        rooms = websocket.query_params.getlist("room")
        if not rooms and (connection.grants is None or connection.grants.may_join(DEFAULT_ROOM)):
            # The default room only if the grants open it: the client is otherwise in no room,
            # as its `welcome` says, and no error frame names a room it never asked for.
            rooms = [DEFAULT_ROOM]
        joined = []
        for room in rooms:
            try:
                if self._admit(connection, room):
                    joined.append(room)
            except ProtocolError as error:
                connection.offer(error_frame(error.code, error.detail))
        since = parse_since(websocket.query_params.get("since"), rooms)
        cursor = {room: since[room] for room in joined if room in since}
        # The joins were in this step: nothing published since can pass the client by.
        self.recovery.resume_later(connection, cursor)

    async def join(self, connection: Connection, message: Join) -> None:
        joined = self._admit(connection, message.room)
        connection.offer(encode({"type": "joined", "room": message.room}))
        if joined and message.since is not None:
            cursor = parse_since(message.since, [message.room])
            await self.recovery.resume(connection, cursor)

    async def leave(self, connection: Connection, message: Leave) -> None:
        if not self.hub.leave(connection, message.room):
            raise ProtocolError(ErrorCode.NOT_A_MEMBER, f"not in room {message.room!r}")
        connection.offer(encode({"type": "left", "room": message.room}))

    def _admit(self, connection: Connection, room: str) -> bool:
        """Join `room` if its name is valid, the grants and the cap allow; joining twice is
        fine (False: it was a member already)."""
        self.check_name(room)
        require_join(connection.grants, room)
        cap = self.settings.max_rooms_per_connection
        if room not in connection.rooms and len(connection.rooms) >= cap:
            raise ProtocolError(RoomErrorCode.TOO_MANY_ROOMS, f"a connection may be in {cap} rooms")
        return self.hub.join(connection, room)
