"""The Hub: every open connection, the rooms they are in, and fan-out to them.

Each connection has a bounded outbox drained by one writer task. Publishing encodes a message
once and appends the same string to every member's outbox without awaiting any socket, so a
client that stops reading delays nobody else. A client whose outbox is full is handled by the
slow-consumer policy: closed with 1013 (try again later) and forgotten, or sent only what fits.

The writer hands over everything queued at once, as one batch (up to `batch_bytes`): under load
a client gets one write with many messages instead of one write per message, which is most of
the cost of a broadcast. At low rates a batch holds one frame, so nothing waits to be batched.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from starlette import status

__all__ = ["Connection", "ConnectionState", "Hub", "SendFrames", "SlowConsumerPolicy"]

# Sends a batch of frames, oldest first, to the client; the transport decides how to frame it.
SendFrames = Callable[[list[str]], Awaitable[None]]
RoomCallback = Callable[[str], None]

_connection_ids = itertools.count(1)


class SlowConsumerPolicy(enum.StrEnum):
    """What to do with a client whose outbox is full."""

    CLOSE = "close"  # close it with 1013 so it reconnects and resyncs; the default
    DROP = "drop"  # skip messages for it until it catches up; for lossy feeds


class ConnectionState(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Connection:
    """One client: who it is, its rooms, and its outbox.

    The writer task (`write_loop`) is the only code that sends on the socket, so frames leave
    in the order they were offered. `close()` may be called from anywhere (the hub, the reader,
    a timer); it is synchronous and never waits for the client: it stops the writer, even
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
        "_writer",
        "close_code",
        "close_reason",
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
    ) -> None:
        self.id = f"c{next(_connection_ids)}"
        self.user = user
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
        # Set only while the writer waits for frames, not an Event per connection: idle
        # connections are the many, and memory per connection is what bounds a process.
        self._waiting: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[Any] | None = None
        self._reader_interrupted = False

    def __repr__(self) -> str:
        return f"<Connection {self.id} user={self.user!r} {self.state.value}>"

    def offer(self, frame: str) -> bool:
        """Queue a frame for this client without waiting; False if it was not queued."""
        if self.state is not ConnectionState.OPEN:
            return False
        if len(self._outbox) >= self._outbox_limit:
            if self._policy is SlowConsumerPolicy.CLOSE:
                self.close(status.WS_1013_TRY_AGAIN_LATER, "slow consumer")
            return False
        self._outbox.append(frame)
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(None)
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
        self._writer = asyncio.create_task(self._write_loop(), name=f"writer-{self.id}")
        return self._writer

    @property
    def pending(self) -> int:
        """Frames queued and not yet handed to the server."""
        return len(self._outbox)

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
            batch, self._outbox = outbox, []
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
        # A copy: a slow consumer closed by `offer` must not change the set mid-iteration.
        return sum(member.offer(frame) for member in tuple(members))

    def close_all(self, code: int, reason: str = "") -> None:
        for connection in self:
            connection.close(code, reason)


def _ignore(room: str) -> None:
    pass
