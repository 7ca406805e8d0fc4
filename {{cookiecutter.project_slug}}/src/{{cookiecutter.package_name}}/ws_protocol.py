"""uvicorn's sans-I/O WebSocket protocol, holding less for each open connection and able to
send without a coroutine.

uvicorn holds each connection's upgrade request and response, and websockets' parser holds the
request too, for as long as the socket is open, though neither is read again once the handshake
is answered (uvicorn 0.54); and its flow-control flag is an `asyncio.Event`, whose waiter deque
(760 bytes empty) exists on every connection, as do the three deques and the Event of its
receive `asyncio.Queue` (about 3 KB). Letting go of the handshake, a lighter flag and a lighter
queue save about 7 KB per idle connection, a third of what a process holds per client
(measured at 2,000 and 10,000 by the template's benchmarks).

The protocol is its connection's `Transport` (hub.py), and offers itself to the app through a
named seam, the ASGI scope extension `TRANSPORT_EXTENSION` (read with `transport_of(scope)`):
under another protocol or server the extension is absent and the endpoint writes through the
plain ASGI `send`. Its `try_write` is uvicorn's `send` of a text message without the `await`
(`send_text_now`): the hub writes a broadcast to idle clients in one synchronous loop, as
`websockets.broadcast()` does, instead of waking a task per client. And since a server's frames
are not masked, a broadcast's frame is the same bytes for every client: it is built once, not
once per client (unless per-message compression is on, which compresses for each client).

An upgrade request websockets cannot parse (a control character in a header value, which h11
let through) gets a 400 and is closed: uvicorn 0.54 answers nothing and keeps the socket open,
so any client could hold server sockets with one bad byte each.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, cast

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.frames import Frame as WebSocketFrame
from websockets.frames import Opcode
from websockets.protocol import State

from .hub import Frame

__all__ = [
    "TRANSPORT_EXTENSION",
    "ReceiveQueue",
    "WebSocketProtocol",
    "WritableFlag",
    "message_text",
    "missing_internals",
    "serving_protocol",
    "transport_of",
]

# The ASGI scope extension in which WebSocketProtocol offers itself, for the life of the app's
# handler: `{"transport": <the protocol>}`. ASGI's own place for what a server adds to the spec.
TRANSPORT_EXTENSION = "realtime.transport"

_BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 24\r\n"
    b"Connection: close\r\n\r\ninvalid upgrade request\n"
)


def message_text(frames: list[Frame]) -> str:
    """A batch's WebSocket message: one frame per line, as JSON never holds a raw newline."""
    if len(frames) == 1:
        return frames[0].text
    return "\n".join([frame.text for frame in frames])


def transport_of(scope: Mapping[str, Any]) -> WebSocketProtocol | None:
    """The template's protocol serving this WebSocket scope, if it is the one (under
    `python -m <package> serve`); None under other protocols, servers and test clients."""
    extension = (scope.get("extensions") or {}).get(TRANSPORT_EXTENSION)
    transport = extension.get("transport") if isinstance(extension, dict) else None
    return transport if isinstance(transport, WebSocketProtocol) else None


class WritableFlag:
    """What uvicorn uses of `asyncio.Event` (set, clear, wait), with an Event only while the
    transport is paused, which is rare, instead of one per connection."""

    __slots__ = ("_paused",)

    def __init__(self) -> None:
        self._paused: asyncio.Event | None = None  # None: writable

    def is_set(self) -> bool:
        return self._paused is None

    def set(self) -> None:
        if self._paused is not None:
            self._paused.set()  # wakes the senders waiting on it
            self._paused = None

    def clear(self) -> None:
        if self._paused is None:
            self._paused = asyncio.Event()

    async def wait(self) -> None:
        if self._paused is not None:
            await self._paused.wait()


class ReceiveQueue:
    """What uvicorn uses of `asyncio.Queue` (put_nowait, empty, get), for its one reader: a
    list and, only while the reader waits, a future, instead of three deques (760 bytes each,
    empty) and an Event with a fourth, on every connection."""

    __slots__ = ("_head", "_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._head = 0  # the next item's index: taking one is O(1), not list.pop(0)
        self._waiter: asyncio.Future[None] | None = None

    def empty(self) -> bool:
        return self._head == len(self._items)

    def qsize(self) -> int:
        return len(self._items) - self._head

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_nowait(self) -> Any:
        """The oldest item; only when not `empty()`."""
        items, head = self._items, self._head
        item, items[head] = items[head], None
        if head + 1 == len(items):
            items.clear()
            self._head = 0
        else:
            self._head = head + 1
        return item

    def wait(self) -> asyncio.Future[None]:
        """Done once an item is put: awaited directly, with no coroutine frame held while the
        connection is idle. A cancelled wait loses nothing: the items stay in the list."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        return waiter

    async def get(self) -> Any:
        while self.empty():
            await self.wait()
        return self.get_nowait()


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """What a client costs stays bounded whatever it sends, read or not:

    - While the transport's writes are paused (the client is not taking what it was sent),
      the server stops reading from it too. websockets answers every ping it parses, and uvicorn
      writes each pong even while writes are paused, so a client that pings and never reads
      would otherwise grow the server's buffers without bound. Not reading is the one bound
      that holds for everything a client sends: its frames wait in the kernel, and its writes
      block. What the server holds for it is then its outbox (`HUB_OUTBOX_LIMIT`), the
      transport's buffer (its high-water mark, 64 KiB, and the write that passed it) and the
      pongs of the last read (one read is at most 256 KiB).
    - Every ping or pong calls `on_control_frame` (see `attach`): the endpoint counts them
      against the client's rate limit, as it does messages, and as a sign that it is there.
    - A close that the client does not complete within `close_timeout` (the closing handshake,
      or the flush of a transport closed with bytes still to send, as at shutdown) aborts the
      transport: uvicorn's `transport.close()` waits to flush first, and so would hold the
      socket, its fd and its buffers for as long as the client goes on not reading. The
      endpoint aborts at once a connection whose close frame cannot even be written (`abort`).
    """

    # As a `Transport` (hub.py): a WebSocket client answers the heartbeat's pings, and writes
    # are tried without waiting first.
    heartbeat: ClassVar[bool] = True
    can_write_now: ClassVar[bool] = True

    # Until `attach`: class attributes, so nothing per connection. A handshake refused with an
    # HTTP response is never attached, and its response may not be taken either.
    on_control_frame: Callable[[], object] | None = None
    close_timeout: float = 2.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writable = WritableFlag()  # type: ignore[assignment]
        self.queue = ReceiveQueue()  # type: ignore[assignment]

    def attach(self, *, on_control_frame: Callable[[], object], close_timeout: float) -> None:
        """Called by the endpoint on accepting: what a ping or pong costs the client, and how
        long a close may wait for it (uvicorn's own close handshake waits 10 s)."""
        self.on_control_frame = on_control_frame
        self.close_timeout = close_timeout

    def detach(self) -> None:
        """Called by the endpoint when the connection is over: the callback refers to the
        connection, whose transport is this protocol, a reference cycle that
        only a full garbage collection would free, for every closed connection."""
        self.on_control_frame = None

    def abort(self) -> None:
        """Drop the connection now, with no closing handshake: for a client that is not taking
        its close frame. Its fd and buffers are released at once."""
        self.transport.abort()

    def handle_ping(self) -> None:
        if self.on_control_frame is not None:
            self.on_control_frame()
        super().handle_ping()

    def handle_pong(self, event: WebSocketFrame) -> None:
        if self.on_control_frame is not None:
            self.on_control_frame()
        super().handle_pong(event)

    def pause_writing(self) -> None:
        super().pause_writing()
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.read_paused and self.queue.empty():
            self.read_paused = False
            self.transport.resume_reading()

    async def receive(self) -> Any:
        # uvicorn's, except that reading resumes only while the client takes what it is sent.
        queue = cast(ReceiveQueue, self.queue)
        while queue.empty():
            await queue.wait()
        message = queue.get_nowait()
        if self.read_paused and self.queue.empty() and self.writable.is_set():
            self.read_paused = False
            self.transport.resume_reading()
        return message

    def shutdown(self) -> None:
        super().shutdown()  # a close frame (1012) written, the transport closed
        self._abort_unless_flushed()

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()  # uvicorn's own pings unanswered: 1011 written, closed
        self._abort_unless_flushed()

    async def run_asgi(self) -> None:
        # getattr: should uvicorn rename its scope, the endpoint writes through `send`, no worse.
        scope = getattr(self, "scope", None)
        extensions = scope.get("extensions") if isinstance(scope, dict) else None
        if extensions is not None:
            extensions[TRANSPORT_EXTENSION] = {"transport": self}
        try:
            await super().run_asgi()  # the app is done: the transport closed, or a close timer set
        finally:
            if extensions is not None:
                # The scope refers to this protocol now: a reference cycle, were it kept.
                extensions.pop(TRANSPORT_EXTENSION, None)
        self._abort_unless_flushed()

    def _abort_unless_flushed(self) -> None:
        """A closed transport waits to flush what it holds before it lets go of the socket:
        forever, for a client that does not read. Give it `close_timeout`, then abort."""
        if (
            self.close_timer is None
            and self.transport.is_closing()
            and self.transport.get_write_buffer_size()
        ):
            self.close_timer = self.loop.call_later(self.close_timeout, self.abort)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if (
            not self.handshake_initiated
            and self.conn.handshake_exc is not None
            and not self.transport.is_closing()
        ):
            self.transport.write(_BAD_REQUEST)
            self.transport.close()

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.close" and self.close_timer is not None:
            # uvicorn's timer would close the transport, which waits to flush: abort instead.
            self.close_timer.cancel()
            self.close_timer = self.loop.call_later(self.close_timeout, self.abort)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # The parser still refers to the request: its headers are emptied, not just dropped.
            # getattr: should uvicorn rename these, nothing is trimmed and nothing breaks.
            for handshake in (getattr(self, "request", None), getattr(self, "response", None)):
                headers = getattr(handshake, "headers", None)
                if headers is not None:
                    headers.clear()
            if hasattr(self, "request") and hasattr(self, "response"):
                self.request = self.response = None  # type: ignore[assignment]

    def try_write(self, frames: list[Frame]) -> bool:
        # Once per client of a broadcast: a one-frame batch's text taken in place.
        return self.send_text_now(frames[0].text if len(frames) == 1 else message_text(frames))

    async def write(self, frames: list[Frame]) -> None:
        await self.send({"type": "websocket.send", "text": message_text(frames)})

    def send_text_now(self, text: str) -> bool:
        """Send a text frame at once, as `send` does when the transport has room; False, sending
        nothing, in every case where `send` would wait (writes paused) or refuse (handshake not
        answered, close sent, client gone). The caller then goes through `send`."""
        conn, transport = self.conn, self.transport
        if (
            not self.handshake_complete
            or self.initial_response is not None
            or self.close_sent
            or self.disconnected
            or not self.writable.is_set()
            or transport.is_closing()
            or conn.state is not State.OPEN
        ):
            return False
        if conn.extensions:  # per-message compression: each client has its own compressor
            conn.send_text(text.encode())
            transport.write(b"".join(conn.data_to_send()))
        else:
            transport.write(_text_frame(text))
        return True


@functools.lru_cache(maxsize=1)
def _text_frame(text: str) -> bytes:
    """The wire bytes of a server's text frame. One entry: a broadcast hands every client the
    same string, one after the other."""
    return WebSocketFrame(Opcode.TEXT, text.encode()).serialize(mask=False)


# What WebSocketProtocol reads of uvicorn's protocol beyond its ASGI `send`, all set by its
# `__init__` (checked with uvicorn 0.52.1 to 0.54, the versions pyproject.toml allows), and what
# it calls on websockets' sans-I/O `ServerProtocol` (`conn`). `request` and `response` are read
# through getattr, so their absence only keeps the handshake in memory.
UVICORN_ATTRIBUTES = (
    "conn",
    "transport",
    "loop",
    "queue",
    "read_paused",
    "close_timer",
    "close_sent",
    "disconnected",
    "handshake_initiated",
    "handshake_complete",
    "initial_response",
    "writable",
    # Methods WebSocketProtocol extends: each is called by uvicorn, so a rename would leave
    # the override silently unused.
    "handle_ping",
    "handle_pong",
    "pause_writing",
    "resume_writing",
    "receive",
    "shutdown",
    "run_asgi",
    "keepalive_timeout",
)
CONNECTION_ATTRIBUTES = ("state", "extensions", "send_text", "data_to_send", "handshake_exc")


def missing_internals(base: type[WebSocketsSansIOProtocol] | None = None) -> list[str]:
    """What the installed uvicorn's sans-I/O protocol (or `base`) lacks of what WebSocketProtocol
    relies on, found by building one as uvicorn would for a connection; empty when all is there."""
    base = base or WebSocketsSansIOProtocol
    loop = asyncio.new_event_loop()
    try:
        config = uvicorn.Config(_no_app, lifespan="off", log_config=None)
        probe: Any = base(config, ServerState(), {}, _loop=loop)
    except Exception as error:  # any change of signature or behaviour: fall back, never crash
        return [f"a connection's protocol ({error!r})"]
    finally:
        loop.close()
    missing = [name for name in UVICORN_ATTRIBUTES if not hasattr(probe, name)]
    if "writable" not in missing and not isinstance(probe.writable, asyncio.Event):
        missing.append("writable as an asyncio.Event")  # what WritableFlag stands in for
    if "queue" not in missing and not isinstance(probe.queue, asyncio.Queue):
        missing.append("queue as an asyncio.Queue")  # what ReceiveQueue stands in for
    if "conn" not in missing:
        conn = probe.conn
        missing += [f"conn.{name}" for name in CONNECTION_ATTRIBUTES if not hasattr(conn, name)]
    return missing


def serving_protocol() -> type[asyncio.Protocol] | Literal["auto"]:
    """The WebSocket protocol to serve with: WebSocketProtocol when the installed uvicorn has all
    it relies on; otherwise one WARNING and uvicorn's own ("auto"), which holds more for each
    connection and costs more per broadcast, but is correct: the hub then writes every batch
    through `send` (endpoint.py's `SendTransport`). So a uvicorn release that renames what this
    module reads is found at start-up, never as an AttributeError in the middle of a broadcast."""
    missing = missing_internals()
    if not missing:
        return WebSocketProtocol
    logging.getLogger(__name__).warning(
        "uvicorn %s lacks what the template's WebSocket protocol relies on (%s): serving with "
        "uvicorn's own protocol instead, slower but correct",
        uvicorn.__version__,
        ", ".join(missing),
    )
    return "auto"


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    """The probe's application: the probe is never connected, so this never runs."""
