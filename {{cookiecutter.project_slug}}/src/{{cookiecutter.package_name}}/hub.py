"""The Hub: every open connection, the rooms they are in, and fan-out to them.

Each connection has a bounded outbox. Publishing encodes a message once, as one `Frame`, and
offers that same frame to every member without awaiting any socket, so a client that stops
reading delays nobody else. A client whose outbox is full is handled by the slow-consumer
policy: closed with 1013 (try again later) and forgotten, or sent only what fits.

A connection's frames reach its client through its `Transport`: the WebSocket (`ws_protocol.py`,
and `endpoint.py` under other servers) or an SSE response (`sse.py`). When they are written, and
by whom, is decided in one place, the hub's `WriteScheduler`.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette import status

from .metrics import MESSAGES_DELIVERED, MESSAGES_DROPPED

if TYPE_CHECKING:
    from .permissions import Grants

__all__ = [
    "QUIET_SECONDS",
    "Connection",
    "ConnectionState",
    "Frame",
    "Hub",
    "HubSettings",
    "SlowConsumerPolicy",
    "Transport",
    "WriteScheduler",
]

RoomCallback = Callable[[str], None]
# Told of one membership that began or ended (presence.py keeps its per-user counts with it).
MemberCallback = Callable[["Connection", str], None]

# A broadcast is written at once only after this long with nothing delivered or written by the
# hub: longer than the gaps between the bursts of a loaded server (a client's reply, a pipelined
# Redis round trip), when more messages are on their way and batching them saves writes; far
# shorter than the gaps at a few messages a second, when a batch would hold one message anyway.
# The hub's own writes, which end each burst, restart the clock, so sustained load never
# qualifies, however long its batches take to write.
QUIET_SECONDS = 0.01

_connection_ids = itertools.count(1)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Frame:
    """One encoded message for clients, with what a transport needs to route it beside the
    text, so that no transport parses the JSON again (once per client, as SSE streams would).

    `room` and `event_id`: where a room's message came from and the id it got as it was
    published (None for frames addressed to one client, and for messages without ids); `type`:
    the message's type, which SSE names its event by (the `welcome`, `error` and other frames
    addressed to one WebSocket client leave it at "message", unread). `encoded`: what a
    transport made of the frame that every client of it gets alike, by transport, made by the
    first client that needs it: a broadcast offers one Frame to every member, so the work is
    done once per message, not once per client, and lives as long as the frame is queued.
    """

    text: str
    room: str | None = None
    event_id: str | None = None
    type: str = "message"
    encoded: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)


class Transport(Protocol):
    """How a connection's frames reach its client: a batch at a time, oldest frame first; the
    transport decides how a batch is framed (one WebSocket message of one frame per line, or
    one SSE event per frame, written at once)."""

    # Whether the heartbeat (heartbeat.py) pings this client and closes it when it falls
    # silent: a WebSocket client can answer; an SSE stream cannot, and keeps its own liveness.
    heartbeat: ClassVar[bool]
    # Whether `try_write` can ever succeed; a transport that can only write by awaiting has its
    # frames go straight to the writer task, with no attempt at the end of the step.
    can_write_now: ClassVar[bool]

    def try_write(self, frames: list[Frame]) -> bool:
        """Write the batch now, without waiting: True if it was written; False, with nothing
        written, if the write would have to wait (the client's buffer is full, the socket is
        closing). An exception means the transport is broken: the connection closes (1011).
        The list is the caller's, and may be every client's of a broadcast: not to be kept."""
        ...

    async def write(self, frames: list[Frame]) -> None:
        """Write the batch, waiting for the client for as long as it takes (the writer task
        awaits this, so waiting delays nobody else). Raising closes the connection (1011)."""
        ...


class SlowConsumerPolicy(enum.StrEnum):
    """What to do with a client whose outbox is full."""

    CLOSE = "close"  # close it with 1013 so it reconnects and resyncs; the default
    DROP = "drop"  # skip messages for it until it catches up; for lossy feeds


class HubSettings(BaseSettings):
    """Limits of each connection."""

    model_config = SettingsConfigDict(env_prefix="HUB_", env_file=".env", extra="ignore")

    # Frames queued for one client before the slow-consumer policy applies. Size it for the
    # largest burst a healthy client must absorb, or healthy clients get shed during bursts.
    outbox_limit: int = Field(default=1024, ge=1)
    slow_consumer_policy: SlowConsumerPolicy = SlowConsumerPolicy.CLOSE
    # A client that is behind gets what is queued for it in one frame, a message per line, up
    # to about this many bytes: one write instead of many, the main cost of a broadcast.
    # 0 sends one message per frame, for clients that cannot split frames on newlines.
    batch_bytes: int = Field(default=64 * 1024, ge=0)
    # A larger frame closes the connection with 1009 (message too big).
    max_message_bytes: int = Field(default=64 * 1024, ge=256)
    # Frames a client may send per second on average, and in one burst; past that the
    # connection is closed with 1008 (policy violation). Pings and pongs count as frames.
    rate_per_second: float = Field(default=50.0, gt=0)
    rate_burst: int = Field(default=100, ge=1)
    # How long to wait for a client to take the close frame before giving up on it: its
    # socket is then aborted, releasing its buffers at once.
    close_timeout_seconds: float = Field(default=2.0, gt=0)


class ConnectionState(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class WriteScheduler:
    """When what is queued for a connection is written, and by whom: the one place that decides.

    Everything queued for a client leaves at once, as one batch (up to `batch_bytes`): under
    load a client gets one write with many messages instead of one write per message, which is
    most of the cost of a broadcast. At low rates a batch holds one frame, so nothing waits to
    be batched. A transport that can write without waiting (`Transport.can_write_now`: the
    template's uvicorn protocol, while the client's buffer has room) skips the writer task,
    whose wake-up per client is most of the cost of a broadcast at low rates. Three routes:

    - at once: a broadcast after a quiet spell (`QUIET_SECONDS` with nothing delivered or
      written) is written during `deliver`, a synchronous loop of writes as in
      `websockets.broadcast()`: at low rates nothing would have been batched, and messages that
      arrive while it is written are batched again;
    - at the end of the step: otherwise what is queued in an event-loop step is written at its
      end, in one callback for every connection, each getting its batch;
    - the writer task: whenever a write would have to wait (`try_write` says False), or the
      transport can only wait (SSE, another server's ASGI send), a writer task takes over the
      connection's backlog, and waits for the client as long as it must (or until the outbox
      overflows), so a client that stops reading still delays nobody. It exists only while
      there is a backlog: an idle connection holds no task, no coroutine and no future for it.

    Frames leave in the order they were offered: they are written without the writer task only
    while it is idle with nothing queued before them, and what cannot be written so goes back
    in front of its outbox. One scheduler per hub: the quiet spell is the whole hub's.
    """

    __slots__ = ("_last_busy", "_unflushed")

    def __init__(self) -> None:
        self._unflushed: list[Connection] = []  # to write at the end of this step
        self._last_busy = 0.0  # when the hub last delivered or wrote, on the loop's clock

    def deliver(self, members: tuple[Connection, ...], frame: Frame) -> int:
        """Offer a frame to each of `members`; return how many took it."""
        loop = asyncio.get_running_loop()
        if not self._unflushed and loop.time() - self._last_busy >= QUIET_SECONDS:
            taken = self._write_at_once(members, frame)
        else:
            offer = self.offer
            taken = 0
            for member in members:
                taken += offer(member, frame)
        self._last_busy = loop.time()
        return taken

    def offer(self, connection: Connection, frame: Frame, at_once: bool = False) -> bool:
        """Queue a frame for a client without waiting; False if it was not queued.

        `at_once`: write it now if the transport takes it without waiting and nothing is queued
        before it (`deliver` asks this after a quiet spell)."""
        if at_once:
            return self._write_at_once((connection,), frame) == 1
        if connection.state is not ConnectionState.OPEN:
            return False
        outbox = connection._outbox
        if len(outbox) >= connection._outbox_limit:
            if connection._policy is SlowConsumerPolicy.CLOSE:
                connection.close(status.WS_1013_TRY_AGAIN_LATER, "slow consumer")
            return False
        outbox.append(frame)
        if len(outbox) == 1 and connection._writer_idle():
            # The first frame since the outbox emptied; later ones join its batch.
            self._start_batch(connection, listed=False)
        return True

    def _start_batch(self, connection: Connection, listed: bool) -> None:
        """Have an idle writer's new batch written: at the end of this step (`_flush`) when
        the transport writes without waiting, else by waking the writer. `listed`: whether
        the connection may already wait for `_flush`; `offer` knows it cannot (its outbox was
        empty), so the per-batch path skips the list scan."""
        if connection.transport.can_write_now:
            if listed and connection in self._unflushed:
                return
            if not self._unflushed:
                asyncio.get_running_loop().call_soon(self._flush)
            self._unflushed.append(connection)
        else:
            connection._wake_writer()

    def _write_at_once(self, members: tuple[Connection, ...], frame: Frame) -> int:
        """Write the frame now to each member whose transport takes it without waiting and
        that has nothing queued before it, in one loop as `websockets.broadcast()` does; queue
        it for the others (`offer`). Return how many took it. The loop is the cost of an
        unbatched broadcast beside the writes themselves, per member: so it is written out
        here, one list for every member's batch (a transport must not keep it), rather than
        through `offer` and `_try_write`."""
        batch = [frame]
        offer = self.offer
        is_open = ConnectionState.OPEN
        taken = 0
        for member in members:
            if (
                member.state is is_open
                and not member._outbox
                # The writer idle: `Connection._writer_idle`, inlined.
                and member._writer is None
                and member._may_write
            ):
                try:
                    written = member.transport.try_write(batch)
                except Exception:
                    member.close(status.WS_1011_INTERNAL_ERROR, "send failed")
                    continue
                if written:
                    taken += 1
                    continue
            taken += offer(member, frame)
        return taken

    def offer_all(self, connection: Connection, frames: list[Frame]) -> bool:
        """Queue frames in order past the outbox limit (a replay, bounded by the history's
        size), without waiting; False if the connection is not open."""
        if connection.state is not ConnectionState.OPEN or not frames:
            return connection.state is ConnectionState.OPEN
        # The end of the step writes them, in one batch with what is queued before them.
        connection._outbox += frames
        if connection._writer_idle():
            self._start_batch(connection, listed=True)
        return True

    def _flush(self) -> None:
        unflushed, self._unflushed = self._unflushed, []
        for connection in unflushed:
            self._flush_one(connection)
        self._last_busy = asyncio.get_running_loop().time()

    def _flush_one(self, connection: Connection) -> None:
        """Write the outbox if the transport takes it without waiting; else wake the writer."""
        while (
            connection._outbox
            and connection.state is ConnectionState.OPEN
            and connection._writer_idle()
        ):
            batch = self._take_batch(connection)
            if not self._try_write(connection, batch):
                if connection.state is ConnectionState.OPEN:
                    connection._outbox[:0] = batch  # nothing was written: back in front, in order
                    connection._wake_writer()
                return

    def _try_write(self, connection: Connection, frames: list[Frame]) -> bool:
        """`try_write`, with a failure ending the connection as a failed `write` does."""
        try:
            return connection.transport.try_write(frames)
        except Exception:
            connection.close(status.WS_1011_INTERNAL_ERROR, "send failed")
            return False

    async def write_loop(self, connection: Connection) -> None:
        """The connection's writer task (`Connection._wake_writer`): writes the backlog, waiting
        for the client as long as it takes, and ends once the outbox is empty; a write that
        fails closes the connection (1011)."""
        try:
            while connection._outbox and connection.state is ConnectionState.OPEN:
                await connection.transport.write(self._take_batch(connection))
        except Exception as error:
            # A send on a socket the client already dropped, usually: expected, quiet.
            logger.debug("writer of %r ended by %r", connection, error)
            connection._writer = None  # not cancelled by the close: it is ending anyway
            connection.close(status.WS_1011_INTERNAL_ERROR, "send failed")
        finally:
            # In the step that found the outbox empty: a frame offered after it starts a new
            # writer. Letting go of the task also breaks the cycle a cancelled one would hold
            # (its CancelledError's traceback holds this frame, which holds the connection).
            if connection._writer is asyncio.current_task():
                connection._writer = None

    def _take_batch(self, connection: Connection) -> list[Frame]:
        """The oldest frames that fit in `batch_bytes` joined by newlines; at least one."""
        outbox = connection._outbox
        limit = connection._batch_bytes
        # Characters, not bytes: a cheap bound, exact for ASCII and never far off.
        size = count = 0
        for frame in outbox:
            size += len(frame.text) + (1 if count else 0)
            if count and size > limit:
                break
            count += 1
        if count == len(outbox):
            # A copy, not a fresh outbox: the connection's own list stays the long-lived one, so
            # a broadcast leaves no new object per connection for the young collections to walk
            # (CPython's counter does not see one replacing another; gc_pacing.py).
            batch = outbox.copy()
            outbox.clear()
        else:
            batch = outbox[:count]
            del outbox[:count]
        return batch


class Connection:
    """One client: who it is, its rooms, its outbox and the transport its frames leave by.

    The outbox is written as its `WriteScheduler` decides, which reads and writes the write
    state here (`_outbox`, `_may_write`, `_writer`): the scheduler's, kept on the connection, as
    it is per client. `close()` may be called from anywhere (the hub, the reader, a timer); it
    is synchronous and never waits for the client: it stops the writer, even mid-send, and
    interrupts the task reading from the client (`read_in`).
    """

    __slots__ = (
        "_batch_bytes",
        "_may_write",
        "_outbox",
        "_outbox_limit",
        "_policy",
        "_reader",
        "_reader_interrupted",
        "_scheduler",
        "_writer",
        "close_code",
        "close_reason",
        "grants",
        "id",
        "last_seen",
        "rooms",
        "state",
        "transport",
        "user",
    )

    def __init__(
        self,
        transport: Transport,
        scheduler: WriteScheduler,
        *,
        user: str,
        outbox_limit: int,
        policy: SlowConsumerPolicy = SlowConsumerPolicy.CLOSE,
        batch_bytes: int = 0,
        grants: Grants | None = None,
    ) -> None:
        self.id = f"c{next(_connection_ids)}"
        self.user = user
        # The rooms it may join and publish to (permissions.py): None, every room; otherwise
        # an object shared with every connection of the same grants.
        self.grants = grants
        self.rooms: set[str] = set()
        self.state = ConnectionState.OPEN
        self.close_code: int | None = None
        self.close_reason = ""
        self.last_seen = asyncio.get_running_loop().time()
        self.transport = transport
        # The hub's (`Hub.scheduler`), shared by every connection: a reference, not a bound
        # method, since memory per connection is what bounds a process.
        self._scheduler = scheduler
        # A list, not a deque: an empty deque holds a 64-slot block (760 bytes) per connection,
        # and the writer takes whole batches, which a list gives as cheaply.
        self._outbox: list[Frame] = []
        self._outbox_limit = outbox_limit
        self._policy = policy
        self._batch_bytes = batch_bytes
        # Frames are held in the outbox until `start_writer`; then written as the scheduler
        # decides.
        self._may_write = False
        # Only while a backlog is written (`WriteScheduler.write_loop`), not a task waiting on
        # every connection: idle connections are the many, and memory per connection is what
        # bounds a process.
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[Any] | None = None
        self._reader_interrupted = False

    def __repr__(self) -> str:
        return f"<Connection {self.id} user={self.user!r} {self.state.value}>"

    def offer(self, frame: Frame | str) -> bool:
        """Queue a frame for this client without waiting; False if it was not queued. A string
        is the text of a frame addressed to this client alone (a reply, an error)."""
        return self._scheduler.offer(self, frame if isinstance(frame, Frame) else Frame(frame))

    def offer_all(self, frames: list[Frame]) -> bool:
        """Queue frames in order, past the outbox limit (a replay: history.Recovery)."""
        return self._scheduler.offer_all(self, frames)

    def close(self, code: int, reason: str = "") -> None:
        """Condemn the connection: drop its outbox and stop its writer, even mid-send.

        The endpoint then sends the close frame (with a time limit, since a client that stopped
        reading may never take it) and removes the connection from the hub.
        """
        if self.state is not ConnectionState.OPEN:
            return
        self.state = ConnectionState.CLOSING
        self.close_code = code
        self.close_reason = reason
        self._outbox.clear()
        if self._writer is not None:
            self._writer.cancel()
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            self._reader_interrupted = True
            reader.cancel()

    def read_in(self, task: asyncio.Task[Any] | None) -> None:
        """Name the task that reads from the client, for `close()` to interrupt; None when it
        stops reading. The endpoint reads in its own task: a task less per connection."""
        self._reader = task

    def interrupted(self) -> bool:
        """Whether the reading task's cancellation came from `close()` alone, and if so undo
        it (`Task.uncancel`), so that the task goes on to clean up and send the close frame;
        any other cancellation (the server shutting down) still stands."""
        if not self._reader_interrupted:
            return False
        self._reader_interrupted = False
        task = asyncio.current_task()
        return task is not None and task.uncancel() == 0

    def start_writer(self) -> None:
        """Start writing: what was queued before (a replay, the `welcome`) first."""
        if self._may_write:
            raise RuntimeError(f"Expected no writer for {self!r}, got one started")
        self._may_write = True
        if self._outbox and self.state is ConnectionState.OPEN:
            self._scheduler._start_batch(self, listed=True)

    def stop_writer(self) -> asyncio.Task[None] | None:
        """Stop writing, even mid-send; the writer task, cancelled, if one was writing, for the
        caller to wait for before it sends anything else (the close frame)."""
        self._may_write = False
        writer = self._writer
        if writer is not None:
            writer.cancel()
        return writer

    @property
    def pending(self) -> int:
        """Frames queued and not yet handed to the server."""
        return len(self._outbox)

    def _writer_idle(self) -> bool:
        """Started, with no writer task busy with a backlog."""
        return self._writer is None and self._may_write

    def _wake_writer(self) -> None:
        """Have a writer task write the backlog; the one already at it, if there is one."""
        if self._writer is None and self._may_write:
            self._writer = asyncio.create_task(
                self._scheduler.write_loop(self), name=f"writer-{self.id}"
            )


class Hub:
    """Connections and room membership in this process.

    Rooms exist only while they have members: leaving the last member frees the room.
    `on_room_opened` and `on_room_closed` are told when that happens (the broker subscribes
    this process to a room only while it has members here); they must not block.
    `on_member_joined` and `on_member_left`, when set, are told of every membership that
    begins or ends (a disconnect ends all of the connection's), after the change.
    """

    def __init__(self) -> None:
        self._connections: set[Connection] = set()
        self._rooms: dict[str, set[Connection]] = {}
        self.on_room_opened: RoomCallback = _ignore
        self.on_room_closed: RoomCallback = _ignore
        # Decides when its connections' frames are written; connections are built with it.
        self.scheduler = WriteScheduler()
        self.on_member_joined: MemberCallback | None = None
        self.on_member_left: MemberCallback | None = None
        # Per room, the members catching up (history.Recovery) and what decides, for each of
        # the room's frames, whether it is offered to them as usual (a `Seam`'s `take`).
        self._catching_up: dict[str, dict[Connection, Callable[[Frame], bool]]] = {}

    def __len__(self) -> int:
        return len(self._connections)

    def __iter__(self) -> Iterator[Connection]:
        return iter(tuple(self._connections))

    @property
    def rooms(self) -> dict[str, int]:
        """Room name to member count, for health output and tests."""
        return {name: len(members) for name, members in self._rooms.items()}

    def add(self, connection: Connection) -> None:
        self._connections.add(connection)

    def remove(self, connection: Connection) -> None:
        """Forget a connection and every membership it had; safe to call twice."""
        for room in tuple(connection.rooms):
            self.leave(connection, room)
        self._connections.discard(connection)
        connection.state = ConnectionState.CLOSED

    def join(self, connection: Connection, room: str) -> bool:
        """Add a member; False if it was one already."""
        if room in connection.rooms:
            return False
        members = self._rooms.get(room)
        if members is None:
            members = self._rooms[room] = set()
            self.on_room_opened(room)
        members.add(connection)
        connection.rooms.add(room)
        if self.on_member_joined is not None:
            self.on_member_joined(connection, room)
        return True

    def leave(self, connection: Connection, room: str) -> bool:
        """Remove a member; False if it was not one."""
        if room not in connection.rooms:
            return False
        connection.rooms.discard(room)
        if self._catching_up:
            self.caught_up(connection, room)
        members = self._rooms.get(room)
        if members is not None:
            members.discard(connection)
            if not members:
                del self._rooms[room]
                self.on_room_closed(room)
        if self.on_member_left is not None:
            self.on_member_left(connection, room)
        return True

    def deliver(
        self, room: str, text: str, event_id: str | None = None, *, type: str = "message"
    ) -> int:
        """Offer an encoded message to every member of a room, with the event id it got as it
        was published, if any; return how many members took it."""
        members = self._rooms.get(room)
        if not members:
            return 0
        frame = Frame(text, room, event_id, type)
        # A copy: a slow consumer closed by `offer` must not change the set mid-iteration.
        targets = tuple(members)
        if self._catching_up and (seams := self._catching_up.get(room)):
            # Only while a member of this room catches up: its seam holds or drops the frame.
            targets = tuple(
                member for member in targets if (take := seams.get(member)) is None or take(frame)
            )
        taken = self.scheduler.deliver(targets, frame)
        # Once per message and room, not per member: the loop stays as cheap as it was.
        MESSAGES_DELIVERED.inc(taken)
        if taken < len(targets):
            MESSAGES_DROPPED.inc(len(targets) - taken)
        return taken

    def catch_up(self, connection: Connection, room: str, take: Callable[[Frame], bool]) -> None:
        """From now on, each of the room's frames is offered to `connection` only if `take`
        says so (a `history.Seam` holds them while its history is read), until `caught_up`."""
        self._catching_up.setdefault(room, {})[connection] = take

    def caught_up(self, connection: Connection, room: str) -> None:
        """`connection` gets the room's frames as every member does again; safe to repeat."""
        seams = self._catching_up.get(room)
        if seams is not None and seams.pop(connection, None) is not None and not seams:
            del self._catching_up[room]

    def close_all(self, code: int, reason: str = "") -> None:
        for connection in self:
            connection.close(code, reason)


def _ignore(room: str) -> None:
    pass
