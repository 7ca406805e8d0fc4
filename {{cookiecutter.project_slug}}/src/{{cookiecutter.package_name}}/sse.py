"""Server-Sent Events: a stream of one or more rooms over plain HTTP, resumable by event id.

`GET /sse?room=a&room=b` streams the rooms' messages as `text/event-stream`. Each message was
given an event id once, when it was published (by the broker), so WebSocket and SSE
subscribers in every process see the same id. The SSE `id:` of an event is the stream's cursor:
the last event id of every room of the stream (`a=17&b=9`), which the browser sends back as
`Last-Event-ID` when it reconnects. The stream then first replays, from each room's bounded
history, exactly the events after the cursor, in order, then goes live: the replay and its seam
are the WebSocket's (history.Recovery). A room whose position is older than its history (or
unknown, e.g. after an in-memory history was lost to a restart) gets one `resync` event
instead of a silent gap.

An SSE stream is a hub `Connection` whose transport is the HTTP response (`EventStream`): rooms,
broker subscriptions (Redis too), the bounded outbox and the slow-consumer policy are the
WebSocket's. Its liveness is its own: the heartbeat does not apply to it (it cannot answer a
ping); its comment pings, every `SSE_PING_INTERVAL_SECONDS`, keep it open through proxies, and
a client that stops reading blocks its writes until its outbox overflows, as a WebSocket's.
`POST /publish` sends a message through the same `Publisher` path as a WebSocket `publish`.

uvicorn gives a streaming response no sign of a shutdown (it waits for it to end, up to
`SERVER_SHUTDOWN_TIMEOUT_SECONDS`, then cancels it), so `ServerSentEvents` hears SIGTERM and
SIGINT through `exit_signals.py` and ends every open stream at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette import status
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from .connection_log import log_connection_closed, log_connection_opened, log_connection_refused
from .endpoint import served_directly
from .exit_signals import on_exit_signal
from .feature import Core, Feature
from .history import Seam, order, parse_cursor
from .hub import Connection, ConnectionState, Frame
from .identity import Identity, close_on_expiry, forbid_unless, http_user
from .metrics import SSE_RESUMES, SSE_RESYNCS
from .permissions import require_join
from .protocol import DEFAULT_ROOM, ErrorReply, encode
from .publishing import check_room_or_422, publish_router

__all__ = ["EventStream", "ServerSentEvents", "SseSettings"]

logger = logging.getLogger(__name__)

# The last event of a stream the server ended, with the WebSocket close code it would have used
# (4001: the credentials expired, sign in again; 1012: the server is restarting).
CLOSE = "close"
# The type of a frame written as an SSE comment: the stream's own ping, queued behind the frames
# before it. No message has it: only rooms' messages and resyncs reach a stream.
_COMMENT = "comment"
_COMMENT_PING = Frame("ping", type=_COMMENT)
# The key of a frame's SSE event in `Frame.encoded`.
_SSE = "sse"
# `order` of the ids being compared, each parsed once, not twice per event per stream: a
# broadcast's id is one string for every stream, and each stream's last id is the one before.
_order = functools.lru_cache(maxsize=256)(order)


def _event_text(cursor: str, event: str, data: str) -> str:
    return f"id: {cursor}\nevent: {event}\ndata: {data}\n\n"


class SseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SSE_", env_file=".env", extra="ignore")

    # Seconds between comment pings: they keep idle streams open through proxies.
    ping_interval_seconds: float = Field(default=15.0, gt=0)
    # The `retry:` hint: how long a browser's EventSource waits before reconnecting.
    retry_milliseconds: int = Field(default=3000, ge=0)
    # Rooms one stream may follow at once.
    max_rooms_per_stream: int = Field(default=32, ge=1)


class EventStream(Response):
    """One SSE client: replay after its cursor, then the live frames the hub gives it.

    The stream is its connection's `Transport` (hub.py): under uvicorn it writes as a WebSocket
    does, at once while the client takes what it is sent (`_UvicornBody`), else by awaiting the
    ASGI `send` in the writer task; it has no heartbeat (its comment pings are its own)."""

    media_type = "text/event-stream"
    heartbeat: ClassVar[bool] = False
    can_write_now: ClassVar[bool] = True  # under uvicorn (`_UvicornBody`)

    def __init__(
        self, sse: ServerSentEvents, identity: Identity, rooms: list[str], cursor: dict[str, str]
    ) -> None:
        # Not Response.__init__: it would declare a body of length 0.
        self.status_code = status.HTTP_200_OK
        self.background = None
        self.init_headers(
            {
                # Proxies must pass each event on at once, and caches must not keep any.
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        self.sse = sse
        self.identity = identity
        self.rooms = rooms
        self.cursor = dict(cursor)
        self._send: Send | None = None
        self._body: _UvicornBody | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._send = send
        self._body = _UvicornBody.of(receive)
        sse, settings = self.sse, self.sse.hub_settings
        connection = Connection(
            self,
            sse.hub.scheduler,
            user=self.identity.user,
            outbox_limit=settings.outbox_limit,
            policy=settings.slow_consumer_policy,
            batch_bytes=settings.batch_bytes,
        )
        # Members first, then the history (history.Recovery): what is published meanwhile is
        # held and either replayed or live, never neither, and never both.
        sse.hub.add(connection)
        sse.streams.add(connection)
        # Expired credentials end the stream, as they close a WebSocket.
        expiry = close_on_expiry(connection, self.identity)
        started: float | None = None
        writer: asyncio.Task[None] | None = None
        try:
            for room in self.rooms:
                sse.hub.join(connection, room)
            # In the step of the joins: no frame can reach the stream before its replay.
            seams = sse.recovery.begin(connection, self.cursor)
            try:
                await sse.listening(self.rooms)
            except ErrorReply as unavailable:
                log_connection_refused("sse", 503, unavailable.detail, scope.get("client"))
                await send({"type": "http.response.start", "status": 503, "headers": []})
                await send({"type": "http.response.body", "body": unavailable.detail.encode()})
                return
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            started = log_connection_opened(connection, "sse", scope.get("client"))
            await self._write(f"retry: {sse.settings.retry_milliseconds}\n\n")
            # One task per stream, this one, as the WebSocket's: the replay, then reading until
            # the client leaves; `Connection.close()` interrupts it (a slow consumer, expired
            # credentials, shutdown). The writer runs only while there is a backlog, and the
            # pings come from one task for every stream (`ServerSentEvents._ping`).
            connection.read_in(asyncio.current_task())
            if connection.state is ConnectionState.OPEN:
                await self._replay(connection, seams)
                sse.live.add(connection)
                await _disconnected(receive)
        except asyncio.CancelledError:
            if not connection.interrupted():
                raise
        except Exception as error:
            # The client gone mid-write, or the history unreadable: the stream ends, as before.
            logger.debug("%r ended by %r", connection, error)
        finally:
            # Nothing here awaits: cleanup must also complete when this task is cancelled.
            connection.read_in(None)
            if expiry is not None:
                expiry.cancel()
            writer = connection.stop_writer()
            if started is not None:
                log_connection_closed(connection, "sse", started)
            sse.live.discard(connection)
            sse.streams.discard(connection)
            sse.hub.remove(connection)
        if writer is not None:
            await asyncio.wait((writer,))
        # End the response, unless the client is gone or stopped reading (then its socket is
        # aborted), saying why when the server chose to: the client then knows whether to sign in
        # again.
        last = b""
        if connection.close_code is not None:
            frame = encode(
                {"type": CLOSE, "code": connection.close_code, "reason": connection.close_reason}
            )
            last = f"event: {CLOSE}\ndata: {frame}\n\n".encode()
        try:
            await asyncio.wait_for(
                send({"type": "http.response.body", "body": last, "more_body": False}),
                timeout=settings.close_timeout_seconds,
            )
        except TimeoutError:
            # uvicorn would close the transport, which waits to flush what the client is not
            # reading: the socket, its fd and its buffers held until it does, and shutdown
            # waiting for it. Dropped now instead.
            _abort_transport(receive)
        except Exception:
            pass  # a send on a socket the client already dropped: expected, quiet

    async def _replay(self, connection: Connection, seams: dict[str, Seam]) -> None:
        """The missed events, then the live ones: the writer writes them all, in order."""
        if self.cursor:
            SSE_RESUMES.inc()
        lost = await self.sse.recovery.finish(connection, self.cursor, seams)
        if lost:
            SSE_RESYNCS.inc(len(lost))
            for room in lost:
                del self.cursor[room]
        connection.start_writer()

    def try_write(self, frames: list[Frame]) -> bool:
        """The batch through the server's own `send`, skipping the ASGI middleware and the
        writer task's wake-up, when that `send` would not wait: under uvicorn (see
        `_UvicornBody`) while the client takes what it is sent."""
        body = self._body
        if body is None or not body.writable():
            return False  # nothing rendered: the writer renders the batch once, in order
        events = self._events(frames)
        if events:
            body.send_now(events)
        return True

    async def write(self, frames: list[Frame]) -> None:
        """Hub frames become SSE events, in one write."""
        events = self._events(frames)
        if events:
            assert self._send is not None
            await self._send({"type": "http.response.body", "body": events, "more_body": True})

    def _events(self, frames: list[Frame]) -> bytes:
        if len(frames) == 1:
            return self._event_for(frames[0])
        return b"".join([self._event_for(frame) for frame in frames])

    def _event_for(self, frame: Frame) -> bytes:
        """The SSE bytes of one hub frame; empty for frames the stream has sent already."""
        if frame.type == _COMMENT:
            return f": {frame.text}\n\n".encode()
        room, event_id = frame.room, frame.event_id
        if room is None or event_id is None:
            return f"event: {frame.type}\ndata: {frame.text}\n\n".encode()
        cursor = self.cursor
        seen = cursor.get(room)
        if seen is not None and _order(event_id) <= _order(seen):
            # Sent already: a broker filling its gap after an outage repeats what it missed,
            # which a stream that opened meanwhile may have replayed from the history.
            return b""
        cursor[room] = event_id
        if len(cursor) > 1:
            return _event_text(urlencode(cursor), frame.type, frame.text).encode()
        # The cursor is this room's alone, as on every stream of one room: the event is then
        # the same bytes on each of them, made by the first and shared (a broadcast offers one
        # Frame to all), instead of an id, an event and an encoded copy of the data per stream.
        event = frame.encoded.get(_SSE)
        if event is None:
            text = _event_text(urlencode(cursor), frame.type, frame.text)
            event = frame.encoded[_SSE] = text.encode()
        return event

    async def _write(self, text: str) -> None:
        assert self._send is not None
        await self._send({"type": "http.response.body", "body": text.encode(), "more_body": True})


class _UvicornBody:
    """uvicorn's own `send` of a response's body (its request cycle's, under the ASGI
    middleware), called without the `await` while it would not wait.

    A stream's events then go out the way a WebSocket's do (ws_protocol.py's `send_text_now`):
    a broadcast is written to every stream in one loop, with no writer task woken and no
    middleware `send` wrappers run per stream, which were most of what an SSE delivery cost.
    uvicorn's `send` (httptools and h11 alike, 0.52.1 to 0.54) awaits only while the client's
    transport has writes paused; otherwise it frames and writes the body and returns. Middleware
    that rewrites the bodies of `text/event-stream` responses would see none of these (Starlette's
    GZip leaves event streams alone): as with `/ws`, which skips the middleware altogether."""

    __slots__ = ("_cycle",)

    def __init__(self, cycle: Any) -> None:
        self._cycle = cycle

    @classmethod
    def of(cls, receive: Receive) -> _UvicornBody | None:
        """The body of the request whose `receive` this is, if uvicorn serves it (Starlette
        passes `receive` on unwrapped); None under other servers and test clients."""
        cycle = getattr(receive, "__self__", None)
        if type(cycle).__name__ != "RequestResponseCycle" or not type(cycle).__module__.startswith(
            "uvicorn.protocols.http."
        ):
            return None
        if not all(hasattr(cycle, name) for name in _CYCLE_ATTRIBUTES):
            return None  # another uvicorn than the one this was written against: use `send`
        return cls(cycle)

    def writable(self) -> bool:
        """Whether `send_now` would write at once: the response started, not complete, and
        the client taking what it is sent."""
        cycle = self._cycle
        return (
            cycle.response_started
            and not cycle.response_complete
            and not cycle.disconnected
            and not cycle.flow.write_paused
            and not cycle.transport.is_closing()
        )

    def send_now(self, body: bytes) -> None:
        """Send a part of the body at once; only when `writable()`."""
        step = self._cycle.send({"type": "http.response.body", "body": body, "more_body": True})
        try:
            step.send(None)
        except StopIteration:
            return  # written, without waiting
        step.close()
        raise RuntimeError("uvicorn's send waited for a transport that took writes")


# What `_UvicornBody` reads of uvicorn's request cycle, beside its `send`.
_CYCLE_ATTRIBUTES = (
    "send",
    "response_started",
    "response_complete",
    "disconnected",
    "flow",
    "transport",
)


async def http_error_response(request: Request, error: HTTPException) -> Response:
    """The response the app's exception handlers make of an HTTPException (FastAPI's JSON
    `{"detail": ...}` unless the app registered its own), found as Starlette finds them."""
    handlers = getattr(request.app, "exception_handlers", {})
    for kind in type(error).__mro__:
        if kind in handlers:
            response = handlers[kind](request, error)
            if inspect.isawaitable(response):
                response = await response
            assert isinstance(response, Response)
            return response
    return await http_exception_handler(request, error)


def _abort_transport(receive: Receive) -> None:
    """Drop the connection of a request at once, with no flush. Under uvicorn, `receive` is its
    request cycle's own (Starlette passes it on unwrapped), which holds the transport; under
    servers that hold it elsewhere, nothing happens."""
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    abort = getattr(transport, "abort", None)
    if callable(abort):
        abort()


async def _disconnected(receive: Receive) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return


class ServerSentEvents(Feature):
    """The `/sse` and `/publish` routes, and the open streams of this process."""

    name = "sse"

    def __init__(self, core: Core, settings: SseSettings) -> None:
        self.core = core
        self.hub = core.hub
        self.recovery = core.recovery
        self.settings = settings
        self.hub_settings = core.hub_settings
        self.identify = http_user(core.identify)
        self.check_room = core.check_room
        self.streams: set[Connection] = set()
        # The streams past their replay, which the pings go to.
        self.live: set[Connection] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self._pinging: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._unsubscribe = on_exit_signal(self.close_all)
        self._pinging = asyncio.create_task(self._ping(), name="sse-ping")

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        pinging, self._pinging = self._pinging, None
        if pinging is not None:
            pinging.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinging
        self.close_all()

    async def _ping(self) -> None:
        """One task pings every stream, as the heartbeat does every WebSocket, where a task
        per stream would hold a coroutine, a sleep's future and its timer for each: a stream's
        first ping comes within an interval of its opening, then one each interval."""
        while True:
            await asyncio.sleep(self.settings.ping_interval_seconds)
            for connection in tuple(self.live):
                connection.offer(_COMMENT_PING)

    async def listening(self, rooms: list[str]) -> None:
        """Wait until this process hears the rooms (a Redis subscription is confirmed)."""
        for room in rooms:
            await self.core.broker.listening(room)

    def router(self) -> APIRouter:
        router = APIRouter(tags=["sse"])
        identify = self.identify

        # The status only documents the route (EventStream sets its own); without it FastAPI
        # looks for a default in EventStream's signature, finds none and fails /openapi.json.
        # Served by `serve` under RealtimeApp (the app's), by FastAPI under any other.
        @router.get("/sse", response_class=EventStream, status_code=status.HTTP_200_OK)
        @served_directly(self.serve)
        async def stream(request: Request, identity: Identity = Depends(identify)) -> EventStream:
            return self.open_stream(request, identity)

        # Publishing over plain HTTP, beside the stream that reads over it.
        router.include_router(publish_router(self.core.publisher, identify, self.check_room))
        return router

    def open_stream(self, request: Request, identity: Identity) -> EventStream:
        """The stream a GET /sse asks for, or an HTTPException (422, 403)."""
        rooms = list(dict.fromkeys(request.query_params.getlist("room"))) or [DEFAULT_ROOM]
        if len(rooms) > self.settings.max_rooms_per_stream:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"a stream may follow {self.settings.max_rooms_per_stream} rooms",
            )
        for room in rooms:
            check_room_or_422(self.check_room, room)
            forbid_unless(require_join, identity, room)
        cursor = parse_cursor(
            request.headers.get("last-event-id") or request.query_params.get("lastEventId"),
            rooms,
        )
        return EventStream(self, identity, rooms, cursor)

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """GET /sse without FastAPI's middleware, router and dependency machinery (RealtimeApp):
        its one dependency called here, and an HTTPException answered by the app's handler for
        it, as FastAPI would."""
        request = Request(scope, receive, send)
        response: Response
        try:
            response = self.open_stream(request, await self.identify(request))
        except HTTPException as error:
            response = await http_error_response(request, error)
        await response(scope, receive, send)

    def close_all(self) -> None:
        """End every open stream; the client's EventSource reconnects (elsewhere)."""
        for connection in tuple(self.streams):
            connection.close(status.WS_1012_SERVICE_RESTART, "server shutting down")
