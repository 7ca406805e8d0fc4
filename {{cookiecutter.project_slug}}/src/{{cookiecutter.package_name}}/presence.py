"""Presence: who is in a room, and (optionally) who just came or went.

A member asks with `{"type":"presence","room":"r"}` and gets
`{"type":"presence","room":"r","users":[{"user":"alice","connections":2}],"total":1,
"truncated":false}`: the users present, most connections first, at most `max_users` of them,
and `total`, how many users are present in all. Over WebSocket only a member of the room may ask
(`not_a_member` otherwise). A backend asks `GET /presence?room=r` with the credentials `/ws`
takes, and need not be connected: it may see the presence of the rooms its grants let it join
(permissions.py), and gets 403 `forbidden` for the others, as a `join` would.

Every connection counts, WebSocket or SSE, under its user; without authentication every
connection is its own anonymous user, named by its connection id. With `events`, a room's
members get `{"type":"presence_join","room":"r","user":"alice"}` when a user's first
connection enters and `presence_leave` when its last one goes: a second tab joins nobody.

The counts are one dict per room, user to connections, kept from the hub's own join and leave
notices: nothing per connection, and nothing on the fan-out path. With Redis, a store
(`presence_redis.py`) shares each process's counts with the others, so the answer spans them,
and an event is sent only after the other processes' counts show the user is not there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette import status

from .broker import Broker
from .connection_log import log_connection_refused
from .feature import Core, Feature
from .hub import Connection, Hub
from .identity import HandshakeRefused, Identify, Identity, anonymous
from .permissions import require_join
from .protocol import (
    DEFAULT_ROOM,
    CheckRoom,
    ErrorCode,
    ErrorReply,
    Message,
    Protocol,
    ProtocolError,
    ServiceError,
    encode,
    only_the_default_room,
)

__all__ = [
    "Counts",
    "LocalPresence",
    "Presence",
    "PresenceErrorCode",
    "PresenceQuery",
    "PresenceSettings",
    "PresenceStore",
]

logger = logging.getLogger(__name__)

# User name to how many of its connections are in a room.
Counts = dict[str, int]


class PresenceErrorCode(enum.StrEnum):
    # With Redis: the other processes' counts could not be read; ask again.
    PRESENCE_UNAVAILABLE = "presence_unavailable"


# A refusal over HTTP; any other ErrorReply is the request's mistake, a 422.
_HTTP_STATUS: dict[str, int] = {
    ErrorCode.FORBIDDEN: status.HTTP_403_FORBIDDEN,
    PresenceErrorCode.PRESENCE_UNAVAILABLE: status.HTTP_503_SERVICE_UNAVAILABLE,
}


class PresenceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRESENCE_", env_file=".env", extra="ignore")

    # Users listed in one answer at most (those with most connections first); `total` still
    # counts all of them and `truncated` says that some were left out.
    max_users: int = Field(default=100, ge=1)
    # Send `presence_join` and `presence_leave` to a room's members.
    events: bool = False
    # With Redis: how often each process rewrites its counts there (it also writes at once
    # on every change). A process that dies without a word (SIGKILL, a lost host) drops out
    # of every answer `3 *` this many seconds after its last write.
    refresh_seconds: float = Field(default=5.0, gt=0)


class PresenceQuery(Message):
    type: Literal["presence"]
    room: str = DEFAULT_ROOM


class PresenceStore:
    """Where the other processes' counts come from: nowhere, in a single process."""

    # Follows an anonymous user's name (its connection id), where several processes each
    # number their connections from 1.
    scope = ""
    # Whether other processes count too: then an event is sent only if the user has no
    # connection in the room in another process either.
    shared = False

    async def start(self) -> None:
        pass

    def changed(self, room: str, counts: Counts) -> None:
        """This process's counts of `room` changed; `counts` is the live dict (empty: the
        room is gone here), which a shared store writes soon."""

    async def others(self, room: str) -> list[Counts]:
        """The counts of `room` in every other live process; raises on a store failure."""
        return []

    async def close(self) -> None:
        pass


class LocalPresence(PresenceStore):
    """One process is the whole world."""


class Presence(Feature):
    """The `presence` handler, `GET /presence`, and the per-room counts behind both."""

    name = "presence"

    def __init__(
        self,
        hub: Hub,
        settings: PresenceSettings,
        broker: Broker,
        *,
        store: PresenceStore | None = None,
        anonymous_users: bool = True,
        check_room: CheckRoom = only_the_default_room,
        identify: Identify = anonymous,
    ) -> None:
        self.hub = hub
        self.settings = settings
        self.broker = broker
        self.store = store or LocalPresence()
        # No authentication: every connection is its own user, named by its id.
        self.anonymous_users = anonymous_users
        self.check_room = check_room
        self.identify = identify
        self._counts: dict[str, Counts] = {}
        # With a shared store, events wait here for one task to check the other processes,
        # in the order their memberships changed.
        self._events: list[tuple[str, str, str]] = []
        self._has_events = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        hub.on_member_joined = self._joined
        hub.on_member_left = self._left

    @classmethod
    def on(
        cls, core: Core, settings: PresenceSettings, store: PresenceStore | None = None
    ) -> Presence:
        """Presence built on the core: its hub, broker, room names and identity."""
        return cls(
            core.hub,
            settings,
            core.broker,
            store=store,
            anonymous_users=core.anonymous,
            check_room=core.check_room,
            # `GET /presence` is one short request: no capacity rule, as for a publish.
            identify=core.identify_request,
        )

    def register(self, protocol: Protocol) -> None:
        protocol.on("presence", PresenceQuery, self.query)

    async def start(self) -> None:
        await self.store.start()
        if self.store.shared and self.settings.events:
            self._sender = asyncio.create_task(self._send_events(), name="presence-events")

    async def stop(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        await self.store.close()

    def local(self, room: str) -> Counts:
        """This process's counts of `room` (a copy)."""
        return dict(self._counts.get(room, {}))

    @property
    def local_rooms(self) -> list[str]:
        return list(self._counts)

    def user_of(self, connection: Connection) -> str:
        return connection.id + self.store.scope if self.anonymous_users else connection.user

    async def query(self, connection: Connection, message: PresenceQuery) -> None:
        if message.room not in connection.rooms:
            raise ProtocolError(ErrorCode.NOT_A_MEMBER, f"not in room {message.room!r}")
        connection.offer(encode(self.answer(message.room, await self.counts(message.room))))

    async def counts(self, room: str) -> Counts:
        """Every process's counts of `room`, summed."""
        counts = self.local(room)
        try:
            others = await self.store.others(room)
        except Exception as error:
            logger.warning("presence of %r unavailable: %r", room, error)
            raise ServiceError(
                PresenceErrorCode.PRESENCE_UNAVAILABLE, "presence is unavailable; try again"
            ) from None
        for other in others:
            for user, count in other.items():
                counts[user] = counts.get(user, 0) + count
        return counts

    def answer(self, room: str, counts: Counts) -> dict[str, object]:
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        shown = ranked[: self.settings.max_users]
        return {
            "type": "presence",
            "room": room,
            "users": [{"user": user, "connections": count} for user, count in shown],
            "total": len(ranked),
            "truncated": len(shown) < len(ranked),
        }

    def router(self) -> APIRouter:
        router = APIRouter(tags=["presence"])
        identify = self.identify

        async def identity(request: Request) -> Identity:
            try:
                return await identify(request)
            except HandshakeRefused as refusal:
                log_connection_refused("http", refusal.status_code, refusal.detail, request.client)
                raise HTTPException(refusal.status_code, refusal.detail, refusal.headers) from None

        @router.get("/presence")
        async def presence(
            room: str = DEFAULT_ROOM, identity: Identity = Depends(identity)
        ) -> dict[str, object]:
            """Who is in `room`, for backends: those whose grants let them join it."""
            try:
                self.check_room(room)
                require_join(identity.grants, room)
                counts = await self.counts(room)
            except ErrorReply as error:
                raise HTTPException(
                    _HTTP_STATUS.get(error.code, status.HTTP_422_UNPROCESSABLE_CONTENT),
                    f"{error.code}: {error.detail}",
                ) from None
            return self.answer(room, counts)

        return router

    def _joined(self, connection: Connection, room: str) -> None:
        user = self.user_of(connection)
        counts = self._counts.setdefault(room, {})
        count = counts.get(user, 0) + 1
        counts[user] = count
        self.store.changed(room, counts)
        if count == 1 and self.settings.events:
            self._announce("presence_join", room, user)

    def _left(self, connection: Connection, room: str) -> None:
        user = self.user_of(connection)
        counts = self._counts.get(room)
        if counts is None or user not in counts:
            return
        count = counts[user] - 1
        if count:
            counts[user] = count
        else:
            del counts[user]
            if not counts:
                del self._counts[room]
        self.store.changed(room, counts)
        if not count and self.settings.events:
            self._announce("presence_leave", room, user)

    def _announce(self, kind: str, room: str, user: str) -> None:
        if self._sender is not None:
            self._events.append((kind, room, user))
            self._has_events.set()
        else:
            self._publish(kind, room, user)

    async def _send_events(self) -> None:
        while True:
            await self._has_events.wait()
            self._has_events.clear()
            events, self._events = self._events, []
            for kind, room, user in events:
                try:
                    elsewhere = any(user in counts for counts in await self.store.others(room))
                except Exception as error:  # Redis down: the event is lost, not the membership
                    logger.warning("presence event of %r not sent: %r", room, error)
                    continue
                # A user who is still (or already) here is neither joining nor leaving.
                here = user in self._counts.get(room, {})
                if not elsewhere and here == (kind == "presence_join"):
                    self._publish(kind, room, user)

    def _publish(self, kind: str, room: str, user: str) -> None:
        # Through the broker, as any message: with Redis it reaches every process's members.
        # Best effort: a broker that is down loses the event, never the membership.
        try:
            sent = self.broker.publish(room, encode({"type": kind, "room": room, "user": user}))
        except RuntimeError:  # no running loop: a membership changed at shutdown
            return
        sent.add_done_callback(_ignore_outcome)


def _ignore_outcome(sent: asyncio.Future[str | None]) -> None:
    if not sent.cancelled():
        sent.exception()
