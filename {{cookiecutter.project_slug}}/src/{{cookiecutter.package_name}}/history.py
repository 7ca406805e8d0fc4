"""The history: each room's recent messages under their event ids, a client's cursor, and
the one way a client that was away catches up (`Recovery`), over WebSocket and SSE alike.

The broker records every message as it publishes it (`LocalBroker` with `LocalHistory` here;
`RedisBroker` with `history_redis.RedisHistory`), so the id travels inside the frame to every
subscriber, WebSocket and SSE alike. A client that was away (a WebSocket joining with `since`,
an SSE stream resuming from its `Last-Event-ID`) asks for what it missed after its cursor: the
last id it saw in each room. Every project keeps the history, `HISTORY_SIZE` messages per room
for `HISTORY_TTL_SECONDS` after the room's last message (`HistorySettings`).

The seam between the replay and the live frames is decided here, once: the client joins the
room first, so that nothing published from then on can pass it by, and the live frames the hub
hands it are held (`Seam`) while the history is read; then it gets the missed events, in order,
then the held frames, dropping those it got both ways. A frame published before the read but
heard after it (Redis hands the read's reply and the channel's message over two connections)
is dropped too, until the first frame newer than the replay: each broker hands the hub a room's
frames in id order, so none older can follow it. A room whose position is gone (trimmed,
expired, another life's id, unreadable) gets one `resync` frame instead, never a silent gap.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import parse_qsl

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .hub import Connection, Frame, Hub
from .protocol import ServiceError, encode, with_id

__all__ = [
    "EVENT_ID",
    "RESYNC",
    "UNKNOWN_POSITION",
    "History",
    "HistorySettings",
    "LocalHistory",
    "Recovery",
    "Seam",
    "order",
    "parse_cursor",
    "parse_since",
]

logger = logging.getLogger(__name__)

# An event id, as both histories write them: `epoch-n` here, `milliseconds-sequence` in Redis.
EVENT_ID = re.compile(r"[0-9]+-[0-9]+")
# Where a client is in a room when its `Last-Event-ID` could not be read: it gets a resync.
UNKNOWN_POSITION = ""
# The type of the frame telling a client its position in some rooms is lost (the SSE `event:`).
RESYNC = "resync"


class HistorySettings(BaseSettings):
    """How much each room remembers, for clients that come back (`since`, `Last-Event-ID`)."""

    model_config = SettingsConfigDict(
        env_prefix="HISTORY_", env_file=".env", extra="ignore", populate_by_name=True
    )

    # Messages kept per room; a client away for more of one room's messages gets a `resync`.
    # SSE_HISTORY_SIZE, its name before WebSocket clients could resume, still works.
    size: int = Field(
        default=1000, ge=1, validation_alias=AliasChoices("HISTORY_SIZE", "SSE_HISTORY_SIZE")
    )
    # A room with no message for this long forgets its history (memory, and the Redis key's
    # expiry, refreshed by every message): a client away longer gets a `resync`.
    ttl_seconds: float = Field(default=3600.0, gt=0)


class History(abc.ABC):
    """Each room's recent messages, each under the event id it got once, as it was published.

    The broker records every message as it publishes it (LocalBroker's stamp is
    `LocalHistory.append`; with Redis, Redis records it), so the id travels inside the frame to
    every subscriber. Ids are strings, increasing within a room.
    """

    @abc.abstractmethod
    async def since(self, room: str, last_id: str) -> list[tuple[str, str]] | None:
        """The events of `room` after `last_id`, oldest first, as (id, frame without id).

        None when `last_id` is not in the history any more, or never was: the client must
        resync, since some events it missed are gone.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Release connections."""


class LocalHistory(History):
    """This process only, in memory: one bounded deque per room.

    Lost on restart, and not shared between processes: ids are `epoch-n`, the epoch being
    when this history began, so an id from another life or process is unknown (resync). `n`
    counts the messages of every room, so a room evicted and begun again never gives an id
    twice: what the room held is remembered as `floor`, the last id it no longer holds.

    A room with no message for `ttl` seconds is forgotten (its deque freed), on a timer set
    for the moment the longest-idle room expires: memory follows the rooms in use.
    """

    def __init__(self, size: int, ttl: float = 3600.0) -> None:
        self.size = size
        self.ttl = ttl
        # Room to (floor, events); ordered by last append, the longest idle first.
        self._rooms: OrderedDict[str, _Room] = OrderedDict()
        self._count = 0
        # Ids of an earlier life of this process (or another process) never match.
        self._epoch = str(time.time_ns() // 1000)
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        """Rooms held."""
        return len(self._rooms)

    def append(self, room: str, frame: str) -> str:
        """Record `frame` (without its id) as the room's newest event; return its id."""
        number = self._count = self._count + 1
        held = self._rooms.get(room)
        if held is None:
            held = self._rooms[room] = _Room(number - 1)
            if self._timer is None:
                self._expire_later()
        else:
            self._rooms.move_to_end(room)
        events = held.events
        if len(events) >= self.size:
            held.floor = events.popleft()[0]
        events.append((number, frame))
        held.touched = time.monotonic()
        return f"{self._epoch}-{number}"

    async def since(self, room: str, last_id: str) -> list[tuple[str, str]] | None:
        epoch, _, number_text = last_id.rpartition("-")
        if epoch != self._epoch or not number_text.isdigit():
            return None
        number = int(number_text)
        held = self._rooms.get(room)
        if number > self._count or held is None or number < held.floor:
            # Never given, or the room was forgotten since (or trimmed past it).
            return None
        if held.touched + self.ttl <= time.monotonic():
            return None  # expired, though the timer has not run yet
        return [(f"{self._epoch}-{n}", frame) for n, frame in held.events if n > number]

    def _expire_later(self) -> None:
        oldest = next(iter(self._rooms.values()), None)
        if oldest is None:
            self._timer = None
            return
        delay = max(0.0, oldest.touched + self.ttl - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._rooms:
            room, held = next(iter(self._rooms.items()))
            if held.touched + self.ttl > now:
                break
            del self._rooms[room]
        self._expire_later()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Room:
    """One room's events in a LocalHistory: every id after `floor` is held, up to the last."""

    __slots__ = ("events", "floor", "touched")

    def __init__(self, floor: int) -> None:
        self.floor = floor
        self.events: deque[tuple[int, str]] = deque()
        self.touched = 0.0


def order(event_id: str) -> tuple[int, ...]:
    """Sort key of an id: `epoch-n` here, `milliseconds-sequence` in Redis."""
    return tuple(int(part) for part in event_id.split("-") if part.isdigit())


def parse_cursor(value: str | None, rooms: list[str]) -> dict[str, str]:
    """A `Last-Event-ID` as room to last id, for a stream of `rooms`.

    A cursor is `room=id` pairs, each room one of the stream's and named once, each id an event
    id (`digits-digits`, the format of both histories). Anything else (`garbage`, `r=`, the
    rooms of another stream) says nothing of where the client is: every room is then at
    `UNKNOWN_POSITION`, and the stream starts with a `resync` for all of them, never silence.
    """
    if not value:
        return {}
    try:
        pairs = parse_qsl(
            value, keep_blank_values=True, strict_parsing=True, max_num_fields=len(rooms)
        )
    except ValueError:
        pairs = []
    cursor = dict(pairs)
    if (
        pairs
        and len(cursor) == len(pairs)
        and all(room in rooms and EVENT_ID.fullmatch(last_id) for room, last_id in pairs)
    ):
        return cursor
    return dict.fromkeys(rooms, UNKNOWN_POSITION)


def parse_since(value: str | None, rooms: list[str]) -> dict[str, str]:
    """A WebSocket's `?since=` as room to last id: one id (`since=17-3`) when it connects to
    one room, else a cursor as `Last-Event-ID` writes it (`since=a%3D17-3%26b%3D9-1`)."""
    if not value:
        return {}
    if len(rooms) == 1 and EVENT_ID.fullmatch(value):
        return {rooms[0]: value}
    return parse_cursor(value, rooms)


def resync_text(rooms: list[str]) -> str:
    """Tells a client its position in `rooms` is gone: it should reload their state."""
    detail = "events were missed and are no longer kept: reload the state of these rooms"
    return encode({"type": RESYNC, "rooms": rooms, "detail": detail})


class Seam:
    """One member catching up in one room: the hub hands it the room's frames for that member
    (`Hub.catch_up`); `take` says whether the hub offers each one to it as usual.

    While the history is read every frame is held. Then, at the seam, a frame at or before
    `last` (the newest id the client has, replayed or seen) is dropped: it came both ways. The
    first newer one ends the seam: the member is an ordinary one again."""

    __slots__ = ("connection", "held", "hub", "last", "reading", "room")

    def __init__(self, hub: Hub, connection: Connection, room: str) -> None:
        self.hub = hub
        self.connection = connection
        self.room = room
        self.held: list[Frame] = []
        self.reading = True
        self.last: tuple[int, ...] | None = None

    def take(self, frame: Frame) -> bool:
        if self.reading:
            self.held.append(frame)
            return False
        if frame.event_id is None or self.last is None:
            return True  # a resync, a foreign publisher's frame: not in the history
        if order(frame.event_id) <= self.last:
            return False
        self.hub.caught_up(self.connection, self.room)
        return True


# Returns once frames published to a room from now on reach this process (Broker.listening).
Listening = Callable[[str], Awaitable[None]]


class Recovery:
    """Catches a client up in rooms it has just joined, from the last id it saw in each: the
    one replay of every transport (see the module docstring for the rule)."""

    def __init__(self, hub: Hub, history: History, listening: Listening) -> None:
        self.hub = hub
        self.history = history
        self.listening = listening
        # Catch-ups begun at connect time (`resume_later`), held until they end.
        self._tasks: set[asyncio.Task[list[str]]] = set()

    def begin(self, connection: Connection, cursor: Mapping[str, str]) -> dict[str, Seam]:
        """Hold the rooms' live frames for `connection`, from this instant: call it in the same
        step as the joins (no await between), then `finish` with what it returns."""
        seams = {}
        for room in cursor:
            seam = seams[room] = Seam(self.hub, connection, room)
            self.hub.catch_up(connection, room, seam.take)
        return seams

    async def finish(
        self, connection: Connection, cursor: Mapping[str, str], seams: Mapping[str, Seam]
    ) -> list[str]:
        """Offer `connection` what it missed in the rooms of `cursor` (room to last id;
        `UNKNOWN_POSITION` for a position that could not be read), then the held frames, then
        end the seams; return the rooms it was told to resync."""
        missed: list[tuple[tuple[int, ...], str, str, str]] = []
        lost: list[str] = []
        try:
            for room, last_id in cursor.items():
                seam = seams[room]
                if room not in connection.rooms:
                    continue  # left meanwhile: its seam ended with it
                events: list[tuple[str, str]] | None = None
                if last_id:
                    try:
                        await self.listening(room)
                        events = await self.history.since(room, last_id)
                    except ServiceError as unavailable:  # the broker did not answer
                        logger.info("no history of room %r: %s", room, unavailable.detail)
                if events is None:
                    lost.append(room)
                    continue
                seam.last = order(last_id)
                if events:
                    seam.last = max(seam.last, order(events[-1][0]))
                missed += [(order(event_id), room, event_id, frame) for event_id, frame in events]
        finally:
            # Nothing here awaits: the seams end, whatever ended the reads.
            frames: list[Frame] = []
            if lost:
                frames.append(Frame(resync_text(lost), type=RESYNC))
            frames += [
                Frame(with_id(frame, event_id), room, event_id)
                for _, room, event_id, frame in sorted(missed)
            ]
            ended: list[Seam] = []
            for seam in seams.values():
                seam.reading = False
                frames += [frame for frame in seam.held if seam.take(frame)]
                seam.held = []
                if seam.last is None:
                    ended.append(seam)
            for seam in ended:
                self.hub.caught_up(connection, seam.room)
            # Bounded by the history's size per room, so past the outbox limit (a replay of
            # HISTORY_SIZE messages must not count as a slow consumer).
            connection.offer_all(frames)
        return lost

    async def resume(self, connection: Connection, cursor: Mapping[str, str]) -> list[str]:
        """`begin` and `finish`, for rooms joined in this step."""
        return await self.finish(connection, cursor, self.begin(connection, cursor))

    def resume_later(self, connection: Connection, cursor: Mapping[str, str]) -> None:
        """`resume`, in a task of its own: from synchronous code (a connection's `on_open`)."""
        if not cursor:
            return
        # The seams begin now, in the step of the joins: begun in the task, they would miss
        # the live frames delivered before it first runs, which would then overtake the replay.
        seams = self.begin(connection, cursor)
        task = asyncio.create_task(
            self.finish(connection, cursor, seams), name=f"resume-{connection.id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
