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
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Literal

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.frames import Frame, Opcode
from websockets.protocol import State

__all__ = ["WebSocketProtocol", "WritableFlag", "missing_internals", "serving_protocol"]


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


# What WebSocketProtocol reads of uvicorn's protocol beyond its ASGI `send`, all set by its
# `__init__` (checked with uvicorn 0.52.1 to 0.54, the versions pyproject.toml allows), and what
# it calls on websockets' sans-I/O `ServerProtocol` (`conn`). `request` and `response` are read
# through getattr, so their absence only keeps the handshake in memory.
UVICORN_ATTRIBUTES = (
    "conn",
    "transport",
    "close_sent",
    "disconnected",
    "handshake_complete",
    "initial_response",
    "writable",
)
CONNECTION_ATTRIBUTES = ("state", "extensions", "send_text", "data_to_send")


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
    if "conn" not in missing:
        conn = probe.conn
        missing += [f"conn.{name}" for name in CONNECTION_ATTRIBUTES if not hasattr(conn, name)]
    return missing


def serving_protocol() -> type[asyncio.Protocol] | Literal["auto"]:
    """The WebSocket protocol to serve with: WebSocketProtocol when the installed uvicorn has all
    it relies on; otherwise one WARNING and uvicorn's own ("auto"), which holds more for each
    connection and costs more per broadcast, but is correct: the hub then writes every batch
    through `send` (endpoint.py's `_write_now_on`). So a uvicorn release that renames what this
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
