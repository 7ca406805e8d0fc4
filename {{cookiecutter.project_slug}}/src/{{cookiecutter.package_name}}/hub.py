"""The Hub: every open connection, the rooms they are in, and fan-out to them.

Each connection has a bounded outbox drained by one writer task. Publishing encodes a message
once and offers the same string to every member without awaiting any socket, so a client that
stops reading delays nobody else. A client whose outbox is full is handled by the
slow-consumer policy: closed with 1013 (try again later) and forgotten, or sent only what fits.

Everything queued for a client leaves at once, as one batch (up to `batch_bytes`): under load a
client gets one write with many messages instead of one write per message, which is most of the
cost of a broadcast. At low rates a batch holds one frame, so nothing waits to be batched.

Sockets that can be written without waiting (`write_now`: the template's uvicorn protocol,
while the client's buffer has room) skip the writer task, whose wake-up per client is most of
the cost of a broadcast at low rates:
- the hub writes what was queued in an event-loop step at its end, in one callback for all;
- a broadcast after a quiet spell (`QUIET_SECONDS` with nothing written) is written at once,
  a synchronous loop of writes as in `websockets.broadcast()`: at low rates nothing would have
  been batched, and messages that arrive while it is written are batched again;
- whenever a write would have to wait, the writer takes over, so a client that stops reading
  still delays nobody.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

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
    "Hub",
    "HubSettings",
    "SendFrames",
    "SlowConsumerPolicy",
    "WriteNow",
]

# Sends a batch of frames, oldest first, to the client; the transport decides how to frame it.
SendFrames = Callable[[list[str]], Awaitable[None]]
# The same without waiting: True if the batch was written, False (nothing written) if the write
# would have to wait, because the client's buffer is full or the socket is closing.
WriteNow = Callable[[list[str]], bool]
RoomCallback = Callable[[str], None]

# A broadcast is written at once only after this long with nothing delivered or written by the
# hub: longer than the gaps between the bursts of a loaded server (a client's reply, a pipelined
# Redis round trip), when more messages are on their way and batching them saves writes; far
# shorter than the gaps at a few messages a second, when a batch would hold one message anyway.
# The hub's own writes, which end each burst, restart the clock, so sustained load never
# qualifies, however long its batches take to write.
QUIET_SECONDS = 0.01

_connection_ids = itertools.count(1)


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


class Connection:
    """One client: who it is, its rooms, and its outbox.

    Frames leave in the order they were offered: they are written without the writer task
    (`write_loop`) only while it is idle with nothing queued before them, and what cannot be
    written so goes back to it. `close()` may be called from anywhere (the hub, the reader, a
    timer); it is synchronous and never waits for the client: it stops the writer, even
    mid-send, and interrupts the task reading from the client (`read_in`).
    """

    __slots__ = (
        "_batch_bytes",
        "_outbox",
        "_outbox_limit",
        "_policy",
        "_reader",
        "_reader_interrupted",
        "_send_frames",
        "_waiting",
        "_write_now",
        "_writer",
        "close_code",
        "close_reason",
        "grants",
        "hub",
        "id",
        "last_seen",
        "rooms",
        "state",
        "user",
    )

    def __init__(
        self,
        send_frames: SendFrames,
        *,
        user: str,
        outbox_limit: int,
        policy: SlowConsumerPolicy = SlowConsumerPolicy.CLOSE,
        batch_bytes: int = 0,
        write_now: WriteNow | None = None,
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
        self._send_frames = send_frames
        # A list, not a deque: an empty deque holds a 64-slot block (760 bytes) per connection,
        # and the writer takes whole batches, which a list gives as cheaply.
        self._outbox: list[str] = []
        self._outbox_limit = outbox_limit
        self._policy = policy
        self._batch_bytes = batch_bytes
        self._write_now = write_now
        # The hub holding the connection (set by `Hub.add`): it writes what is queued for its
        # connections in one callback. A reference, not a bound method: memory per connection.
        self.hub: Hub | None = None
        # Set only while the writer waits for frames, not an Event per connection: idle
        # connections are the many, and memory per connection is what bounds a process.
        self._waiting: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[Any] | None = None
        self._reader_interrupted = False

    def __repr__(self) -> str:
        return f"<Connection {self.id} user={self.user!r} {self.state.value}>"

    def offer(self, frame: str, *, at_once: bool = False) -> bool:
        """Queue a frame for this client without waiting; False if it was not queued.

        `at_once`: write it now if the socket takes it without waiting and nothing is queued
        before it (the hub asks this after a quiet spell)."""
        if self.state is not ConnectionState.OPEN:
            return False
        if at_once and not self._outbox and self._writer_idle():
            if self._write([frame]):
                return True
            if self.state is not ConnectionState.OPEN:
                return False  # the write failed
        if len(self._outbox) >= self._outbox_limit:
            if self._policy is SlowConsumerPolicy.CLOSE:
                self.close(status.WS_1013_TRY_AGAIN_LATER, "slow consumer")
            return False
        self._outbox.append(frame)
        if len(self._outbox) == 1 and self._writer_idle():
            # The first frame since the outbox emptied; later ones join its batch.
            if self._write_now is not None and self.hub is not None:
                self.hub.flush_soon(self)
            else:
                self._wake_writer()
        return True

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

    def start_writer(self) -> asyncio.Task[None]:
        if self._writer is not None:
            raise RuntimeError(f"Expected no writer for {self!r}, got {self._writer!r}")
        writer = asyncio.create_task(self._write_loop(), name=f"writer-{self.id}")
        writer.add_done_callback(self._forget_writer)
        self._writer = writer
        return writer

    def _forget_writer(self, writer: asyncio.Task[None]) -> None:
        # A cancelled writer keeps its CancelledError, whose traceback holds the writer's frame,
        # which holds this connection, which holds the writer: a cycle that only a full garbage
        # collection would free, for every closed connection. Letting go of the finished writer
        # breaks it, so reference counting frees the connection the moment it is forgotten.
        if self._writer is writer:
            self._writer = None

    @property
    def pending(self) -> int:
        """Frames queued and not yet handed to the server."""
        return len(self._outbox)

    def _writer_idle(self) -> bool:
        return self._waiting is not None and not self._waiting.done()

    def _wake_writer(self) -> None:
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    def flush(self) -> None:
        """Write the outbox if the socket takes it without waiting; else wake the writer, which
        waits for the client as long as it must (or until the outbox overflows)."""
        while self._outbox and self.state is ConnectionState.OPEN and self._writer_idle():
            batch = self._take_batch()
            if not self._write(batch):
                if self.state is ConnectionState.OPEN:
                    self._outbox[:0] = batch  # nothing was written: back in front, in order
                    self._wake_writer()
                return

    def _write(self, frames: list[str]) -> bool:
        """`write_now`, with a failure ending the connection as a failed send in the writer does."""
        if self._write_now is None:
            return False
        try:
            return self._write_now(frames)
        except Exception:
            self.close(status.WS_1011_INTERNAL_ERROR, "send failed")
            return False

    async def _write_loop(self) -> None:
        while self.state is ConnectionState.OPEN:
            if not self._outbox:
                self._waiting = asyncio.get_running_loop().create_future()
                try:
                    await self._waiting
                finally:
                    self._waiting = None
            while self._outbox:
                await self._send_frames(self._take_batch())

    def _take_batch(self) -> list[str]:
        """The oldest frames that fit in `batch_bytes` joined by newlines; at least one."""
        outbox = self._outbox
        # Characters, not bytes: a cheap bound, exact for ASCII and never far off.
        size = count = 0
        for frame in outbox:
            size += len(frame) + (1 if count else 0)
            if count and size > self._batch_bytes:
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


class Hub:
    """Connections and room membership in this process.

    Rooms exist only while they have members: leaving the last member frees the room.
    `on_room_opened` and `on_room_closed` are told when that happens (the broker subscribes
    this process to a room only while it has members here); they must not block.
    """

    def __init__(self) -> None:
        self._connections: set[Connection] = set()
        self._rooms: dict[str, set[Connection]] = {}
        self.on_room_opened: RoomCallback = _ignore
        self.on_room_closed: RoomCallback = _ignore
        self._unflushed: list[Connection] = []  # to write at the end of this step
        self._last_busy = 0.0  # when the hub last delivered or wrote, on the loop's clock

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
        connection.hub = self

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
        return True

    def leave(self, connection: Connection, room: str) -> bool:
        """Remove a member; False if it was not one."""
        if room not in connection.rooms:
            return False
        connection.rooms.discard(room)
        members = self._rooms.get(room)
        if members is not None:
            members.discard(connection)
            if not members:
                del self._rooms[room]
                self.on_room_closed(room)
        return True

    def deliver(self, room: str, frame: str) -> int:
        """Offer an encoded frame to every member of a room; return how many took it."""
        members = self._rooms.get(room)
        if not members:
            return 0
        loop = asyncio.get_running_loop()
        at_once = not self._unflushed and loop.time() - self._last_busy >= QUIET_SECONDS
        # A copy: a slow consumer closed by `offer` must not change the set mid-iteration.
        taken = 0
        for member in tuple(members):
            taken += member.offer(frame, at_once=at_once)
        self._last_busy = loop.time()
        # Once per message and room, not per member: the loop above stays as cheap as it was.
        MESSAGES_DELIVERED.inc(taken)
        if taken < len(members):
            MESSAGES_DROPPED.inc(len(members) - taken)
        return taken

    def close_all(self, code: int, reason: str = "") -> None:
        for connection in self:
            connection.close(code, reason)

    def flush_soon(self, connection: Connection) -> None:
        """Write what is queued for the connection at the end of this event-loop step."""
        if not self._unflushed:
            asyncio.get_running_loop().call_soon(self._flush)
        self._unflushed.append(connection)

    def _flush(self) -> None:
        unflushed, self._unflushed = self._unflushed, []
        for connection in unflushed:
            connection.flush()
        self._last_busy = asyncio.get_running_loop().time()


def _ignore(room: str) -> None:
    pass
