"""The WebSocket endpoint: handshake, accept, read loop, and cleanup on every way out.

One handler shape for every connection:

1. handshake: `identify` looks at the upgrade request (the auth feature plugs in here) and may
   refuse it with an HTTP status before anything is accepted; an identity that expires gets a
   timer that closes the connection with `SESSION_EXPIRED` (4001) when it does;
2. accept, register with the hub, start writing, join the first rooms, send `welcome`;
3. the read loop, in the handler's own task (one task less per connection), until the client
   leaves or the connection is closed: `Connection.close()` interrupts it, and a write that
   fails closes the connection;
4. cleanup in `finally`: the writer stopped, the connection and its rooms removed from the hub,
   and the close frame sent (bounded in time) when the server chose to close.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from fastapi import APIRouter, FastAPI, WebSocket
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette import status
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect, WebSocketState

from .connection_log import log_connection_closed, log_connection_opened, log_connection_refused
from .feature import Core, Feature
from .history import parse_since
from .hub import Connection, ConnectionState, Frame, Hub, HubSettings, Transport
from .identity import HandshakeRefused, Identify, Identity, anonymous, close_on_expiry
from .metrics import MESSAGES_RECEIVED
from .protocol import DEFAULT_ROOM, ErrorCode, ErrorReply, Protocol, encode, error_frame
from .rate_limit import TokenBucket
from .ws_protocol import message_text, transport_of

__all__ = [
    "DefaultRoom",
    "Endpoint",
    "HandshakeRefused",
    "Identify",
    "Identity",
    "OnOpen",
    "RealtimeApp",
    "SendTransport",
    "anonymous",
    "join_default_room",
    "served_directly",
]

logger = logging.getLogger(__name__)


OnOpen = Callable[[Connection, WebSocket], None]
F = TypeVar("F", bound=Callable[..., object])

# The attribute of a GET route's endpoint function naming the ASGI app that serves it instead
# (`served_directly`, RealtimeApp).
_SERVED_BY = "served_directly_by"


class Endpoint:
    """The `/ws` route handler; one instance per app."""

    def __init__(
        self,
        hub: Hub,
        protocol: Protocol,
        settings: HubSettings,
        *,
        identify: Identify = anonymous,
        on_open: OnOpen | None = None,
        welcome: Mapping[str, object] | None = None,
    ) -> None:
        self.hub = hub
        self.protocol = protocol
        self.settings = settings
        self.identify = identify
        self.on_open = on_open or functools.partial(join_default_room, hub)
        # Extra fields of every `welcome` frame, for features that tell clients what to expect.
        self.welcome = dict(welcome or {})

    async def __call__(self, websocket: WebSocket) -> None:
        await self.serve(websocket, websocket.send)

    async def serve(self, websocket: WebSocket, send: Send) -> None:
        """Serve one connection; `send` carries its frames: the server's own ASGI send when
        the caller has it (RealtimeApp), which skips Starlette's per-message state checks, unless
        the server offers a transport of its own (the template's, `ws_protocol.transport_of`)."""
        try:
            identity = await self.identify(websocket)
        except HandshakeRefused as refusal:
            log_connection_refused("ws", refusal.status_code, refusal.detail, websocket.client)
            # An HTTP response to the upgrade request: the socket is never accepted.
            await websocket.send_denial_response(
                Response(refusal.detail, status_code=refusal.status_code, headers=refusal.headers)
            )
            return
        await websocket.accept()
        ws_protocol = transport_of(websocket.scope)
        transport: Transport = ws_protocol if ws_protocol is not None else SendTransport(send)
        connection = Connection(
            transport,
            self.hub.scheduler,
            user=identity.user,
            outbox_limit=self.settings.outbox_limit,
            policy=self.settings.slow_consumer_policy,
            batch_bytes=self.settings.batch_bytes,
            grants=identity.grants,
        )
        self.hub.add(connection)
        connection.start_writer()
        expiry = close_on_expiry(connection, identity)
        connection.read_in(asyncio.current_task())
        bucket = TokenBucket(self.settings.rate_per_second, self.settings.rate_burst)
        if ws_protocol is not None:
            ws_protocol.attach(
                on_control_frame=functools.partial(_control_frame, connection, bucket),
                close_timeout=self.settings.close_timeout_seconds,
            )
        started: float | None = None
        disconnect: Message | None = None
        try:
            self.on_open(connection, websocket)
            started = log_connection_opened(connection, "ws", websocket.client)
            connection.offer(
                encode(
                    {
                        "type": "welcome",
                        "connection": connection.id,
                        "user": connection.user,
                        "rooms": sorted(connection.rooms),
                    }
                    | self.welcome
                )
            )
            disconnect = await self._read_loop(websocket, connection, bucket)
        except asyncio.CancelledError:
            if not connection.interrupted():
                raise
        except (WebSocketDisconnect, OSError) as error:
            # A receive on a socket the client already dropped: expected, quiet.
            logger.debug("reading %r ended by %r", connection, error)
        except Exception:
            # A bug (in a feature's on_open, the welcome frame, the read loop): never hidden.
            # The client is told, and the operator gets the traceback.
            logger.exception("serving %r failed", connection)
            connection.close(status.WS_1011_INTERNAL_ERROR, "internal error")
        finally:
            # Nothing here awaits: cleanup must also complete when this task is cancelled.
            connection.read_in(None)
            if expiry is not None:
                expiry.cancel()
            writer = connection.stop_writer()
            if ws_protocol is not None:
                ws_protocol.detach()
            if started is not None:
                log_connection_closed(connection, "ws", started, disconnect)
            self.hub.remove(connection)
        if writer is not None:
            await asyncio.wait((writer,))
        if connection.close_code is not None:
            sent = await self._close(websocket, connection.close_code, connection.close_reason)
            if not sent and ws_protocol is not None:
                # The client is not taking what it was sent: holding its socket until it does
                # would hold an fd and megabytes of buffers, and make shutdown wait for it.
                ws_protocol.abort()

    async def _close(self, websocket: WebSocket, code: int, reason: str) -> bool:
        """Send the close frame, but never wait long for a client that stopped reading; False
        if it could not be handed to the server in time."""
        if websocket.application_state is not WebSocketState.CONNECTED:
            return True
        try:
            await asyncio.wait_for(
                websocket.close(code, reason), timeout=self.settings.close_timeout_seconds
            )
        except TimeoutError:
            return False
        except Exception:
            pass  # a close on a socket the client already dropped: expected, quiet
        return True

    async def _read_loop(
        self, websocket: WebSocket, connection: Connection, bucket: TokenBucket
    ) -> Message | None:
        """Read frames until the client leaves (then its disconnect event) or the connection is
        condemned."""
        loop = asyncio.get_running_loop()
        max_bytes = self.settings.max_message_bytes
        while connection.state is ConnectionState.OPEN:
            event = await websocket.receive()
            if event["type"] == "websocket.disconnect":
                return event
            connection.last_seen = loop.time()
            MESSAGES_RECEIVED.inc()
            text: str | None = event.get("text")
            if not bucket.take():
                connection.close(status.WS_1008_POLICY_VIOLATION, "rate limit exceeded")
                return None
            if _size(event) > max_bytes:
                connection.close(status.WS_1009_MESSAGE_TOO_BIG, f"limit is {max_bytes} bytes")
                return None
            if text is None:
                connection.offer(
                    error_frame(ErrorCode.BINARY_NOT_SUPPORTED, "send JSON text frames")
                )
                continue
            try:
                message, handler = self.protocol.decode(text)
                await handler(connection, message)
                # Else the idle loop holds the last one (a model and its fields' set) until the
                # next: objects per connection, young ones after every pong (gc_pacing.py).
                del message, handler
            except ErrorReply as error:
                connection.offer(error_frame(error.code, error.detail))
            except Exception:
                logger.exception("handler failed on %r", connection)
                connection.close(status.WS_1011_INTERNAL_ERROR, "internal error")
                return None
        return None


def join_default_room(hub: Hub, connection: Connection, websocket: WebSocket) -> bool:
    """Without the rooms feature, every client is in the default room; unless its grants
    exclude it: the client is then in no room (`welcome` says so). False if it did not join."""
    if connection.grants is None or connection.grants.may_join(DEFAULT_ROOM):
        return hub.join(connection, DEFAULT_ROOM)
    return False


class DefaultRoom(Feature):
    """The one broadcast channel of a service without the rooms feature; `?since=<id>`
    resumes it after the last event id the client saw (history.Recovery)."""

    name = "default_room"

    def __init__(self, core: Core) -> None:
        self.hub = core.hub
        self.recovery = core.recovery

    def on_open(self, connection: Connection, websocket: WebSocket) -> None:
        if join_default_room(self.hub, connection, websocket):
            since = parse_since(websocket.query_params.get("since"), [DEFAULT_ROOM])
            # The join was in this step: nothing published since can pass the client by.
            self.recovery.resume_later(connection, since)


class RealtimeApp(FastAPI):
    """FastAPI, except that a WebSocket for an `Endpoint` route goes straight to the endpoint.

    An open socket holds every coroutine between the server and its handler for as long as it
    is open. FastAPI's (middleware, router, exception wrappers, dependency exit stacks) are some
    20 frames and 3 exit stacks: about 10 KB, a third of an idle connection, measured at 10,000.
    The endpoint needs none of them: it takes no dependencies and raises nothing they handle.
    So is a GET for a route whose endpoint is `served_directly` (`/sse`): a stream, open as long
    as a socket, held some 7 KB more through them. The price: middleware added with
    `add_middleware` does not see these sockets and streams (it still sees every other HTTP
    request).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Path to the ASGI app serving its GETs, of the routes included `served_directly`.
        self.served_directly: dict[str, ASGIApp] = {}

    def include_router(self, router: APIRouter, *, prefix: str = "", **kwargs: Any) -> None:
        # Here, as FastAPI keeps included routers nested (its own private structure).
        for route in router.routes:
            if isinstance(route, APIRoute) and (serve := getattr(route.endpoint, _SERVED_BY, None)):
                self.served_directly[prefix + route.path] = serve
        super().include_router(router, prefix=prefix, **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and (serve := self.served_directly.get(scope["path"])) is not None
        ):
            scope["app"] = self
            await serve(scope, receive, send)
            return
        if scope["type"] == "websocket":
            for route in self.router.routes:
                if (
                    isinstance(route, APIWebSocketRoute)
                    and route.path == scope["path"]
                    and isinstance(route.endpoint, Endpoint)
                ):
                    scope["app"] = self
                    await route.endpoint.serve(WebSocket(scope, receive, send), send)
                    return
        await super().__call__(scope, receive, send)


def served_directly(app: ASGIApp) -> Callable[[F], F]:
    """Have RealtimeApp serve a GET route with `app` instead of going through FastAPI; the
    route stays, for the OpenAPI schema and its other methods. `app` must do what the route
    did: its dependencies, and its HTTPExceptions made responses (as sse.py's
    `http_error_response` does)."""

    def mark(endpoint: F) -> F:
        setattr(endpoint, _SERVED_BY, app)
        return endpoint

    return mark


class SendTransport:
    """A WebSocket's frames through the ASGI `send`, under any server: every batch waits for
    it, in the writer task, as there is no way to write without awaiting."""

    __slots__ = ("_send",)

    heartbeat: ClassVar[bool] = True
    can_write_now: ClassVar[bool] = False

    def __init__(self, send: Send) -> None:
        self._send = send

    def try_write(self, frames: list[Frame]) -> bool:
        return False

    async def write(self, frames: list[Frame]) -> None:
        await self._send({"type": "websocket.send", "text": message_text(frames)})


def _control_frame(connection: Connection, bucket: TokenBucket) -> None:
    """A ping or pong from the client: a frame like any other for the rate limit, and as good
    a sign of life as a message (the `websockets` client's keepalive sends nothing else)."""
    if connection.state is not ConnectionState.OPEN:
        return
    connection.last_seen = asyncio.get_running_loop().time()
    if not bucket.take():
        connection.close(status.WS_1008_POLICY_VIOLATION, "rate limit exceeded")


def _size(event: Mapping[str, object]) -> int:
    """Bytes in a frame; the UTF-8 length is computed only when it could matter."""
    text = event.get("text")
    if isinstance(text, str):
        return len(text) if text.isascii() else len(text.encode())
    data = event.get("bytes")
    return len(data) if isinstance(data, bytes) else 0
