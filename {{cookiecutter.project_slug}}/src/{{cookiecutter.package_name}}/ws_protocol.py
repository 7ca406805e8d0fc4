"""uvicorn's sans-I/O WebSocket protocol, holding less for each open connection and able to
send without a coroutine.

uvicorn holds each connection's upgrade request and response, and websockets' parser holds the
request too, for as long as the socket is open, though neither is read again once the handshake
is answered (uvicorn 0.54); and its flow-control flag is an `asyncio.Event`, whose waiter deque
(760 bytes empty) exists on every connection. Letting go of the handshake and a lighter flag
save about 4 KB per idle connection, a fifth of what a process holds per client (measured at
10,000 by the template's benchmarks).

`send_text_now` is uvicorn's `send` of a text message without the `await`: the hub writes a
broadcast to idle clients in one synchronous loop, as `websockets.broadcast()` does, instead of
waking a task per client. And since a server's frames are not masked, a broadcast's frame is
the same bytes for every client: it is built once, not once per client (unless per-message
compression is on, which compresses for each client).

An upgrade request websockets cannot parse (a control character in a header value, which h11
let through) gets a 400 and is closed: uvicorn 0.54 answers nothing and keeps the socket open,
so any client could hold server sockets with one bad byte each.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State

__all__ = ["WebSocketProtocol", "WritableFlag"]

_BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 24\r\n"
    b"Connection: close\r\n\r\ninvalid upgrade request\n"
)


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


class WebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writable = WritableFlag()  # type: ignore[assignment]

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
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # The parser still refers to the request: its headers are emptied, not just dropped.
            # getattr: should uvicorn rename these, nothing is trimmed and nothing breaks.
            for handshake in (getattr(self, "request", None), getattr(self, "response", None)):
                headers = getattr(handshake, "headers", None)
                if headers is not None:
                    headers.clear()
            if hasattr(self, "request") and hasattr(self, "response"):
                self.request = self.response = None  # type: ignore[assignment]

    def send_text_now(self, text: str) -> bool:
        """Send a text frame at once, as `send` does when the transport has room; False, sending
        nothing, in every case where `send` would wait (writes paused) or refuse (handshake not
        answered, close sent, client gone). The caller then goes through `send`."""
        if (
            not self.handshake_complete
            or self.initial_response is not None
            or self.close_sent
            or self.disconnected
            or not self.writable.is_set()
            or self.transport.is_closing()
            or self.conn.state is not State.OPEN
        ):
            return False
        if self.conn.extensions:  # per-message compression: each client has its own compressor
            self.conn.send_text(text.encode())
            self.transport.write(b"".join(self.conn.data_to_send()))
        else:
            self.transport.write(_text_frame(text))
        return True


@functools.lru_cache(maxsize=1)
def _text_frame(text: str) -> bytes:
    """The wire bytes of a server's text frame. One entry: a broadcast hands every client the
    same string, one after the other."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False)
