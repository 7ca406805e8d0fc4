"""Server-Sent Events: a stream of one or more rooms over plain HTTP, resumable by event id.

`GET /sse?room=a&room=b` streams the rooms' messages as `text/event-stream`. Each message was
given an event id once, when it was published (by the broker), so WebSocket and SSE
subscribers in every process see the same id. The SSE `id:` of an event is the stream's cursor:
the last event id of every room of the stream (`a=17&b=9`), which the browser sends back as
`Last-Event-ID` when it reconnects. The stream then first replays, from each room's bounded
history, exactly the events after the cursor, in order, then goes live. A room whose position
is older than its history (or unknown, e.g. after an in-memory history was lost to a restart)
gets one `resync` event instead of a silent gap.

An SSE stream is a hub `Connection` whose transport is the HTTP response (`EventStream`): rooms,
broker subscriptions (Redis too), the bounded outbox and the slow-consumer policy are the
WebSocket's. Its liveness is its own: the heartbeat does not apply to it (it cannot answer a
ping); its comment pings, every `SSE_PING_INTERVAL_SECONDS`, keep it open through proxies, and
a client that stops reading blocks its writes until its outbox overflows, as a WebSocket's.
`POST /publish` sends a message through the same `Publisher` path as a WebSocket `publish`.

uvicorn gives a streaming response no sign of a shutdown (it waits for it to end, up to
`SERVER_SHUTDOWN_TIMEOUT_SECONDS`, then cancels it), so `ServerSentEvents.watch_exit_signals`
chains onto the server's SIGTERM and SIGINT handlers and ends every open stream at once.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import logging
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, ClassVar
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, JsonValue, WithJsonSchema
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette import status
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from .broker import AlreadyPublished, PublishOutcomeUnknown
from .connection_log import (
    Transport,
    log_connection_closed,
    log_connection_opened,
    log_connection_refused,
)
from .hub import Connection, Frame, Hub
from .identity import HandshakeRefused, Identify, Identity, close_on_expiry
from .metrics import SSE_RESUMES, SSE_RESYNCS
from .permissions import Grants, require_join, require_publish
from .protocol import (
    DEFAULT_ROOM,
    MAX_KEY_LENGTH,
    ErrorCode,
    ProtocolError,
    encode,
    parse_json,
    validated,
    with_id,
)
from .publishing import Publisher

if TYPE_CHECKING:
    from .settings import HubSettings

__all__ = [
    "History",
    "IdentifyRequest",
    "LocalHistory",
    "PublishBody",
    "ServerSentEvents",
    "SseSettings",
    "anonymous_request",
    "http_user",
    "only_the_default_room",
]

logger = logging.getLogger(__name__)

# The SSE `event:` of the frame telling a client its position in some rooms is lost.
RESYNC = "resync"
# The last event of a stream the server ended, with the WebSocket close code it would have used
# (4001: the credentials expired, sign in again; 1012: the server is restarting).
CLOSE = "close"
# The type of a frame written as an SSE comment: the stream's own ping, queued behind the frames
# before it. No message has it: only rooms' messages and resyncs reach a stream.
_COMMENT = "comment"
_COMMENT_PING = Frame("ping", type=_COMMENT)
# An event id, as both histories write them: `epoch-n` here, `milliseconds-sequence` in Redis.
EVENT_ID = re.compile(r"[0-9]+-[0-9]+")
# Where a client is in a room when its `Last-Event-ID` could not be read: it gets a resync.
UNKNOWN_POSITION = ""


class SseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SSE_", env_file=".env", extra="ignore")

    # Events kept per room for clients that reconnect with Last-Event-ID; a client away for
    # longer than this many events of one room gets a `resync` event for it.
    history_size: int = Field(default=1000, ge=1)
    # Seconds between comment pings: they keep idle streams open through proxies.
    ping_interval_seconds: float = Field(default=15.0, gt=0)
    # The `retry:` hint: how long a browser's EventSource waits before reconnecting.
    retry_milliseconds: int = Field(default=3000, ge=0)
    # Rooms one stream may follow at once.
    max_rooms_per_stream: int = Field(default=32, ge=1)


class History(abc.ABC):
    """Each room's recent messages, each under the event id it got once, as it was published.

    The broker records every message as it publishes it (LocalBroker's stamp is
    `LocalHistory.append`; with Redis, Redis records it), so the id travels inside the frame to
    every subscriber. Ids are strings, increasing within a room.
    """

    async def start(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Begin background work, if any."""

    @abc.abstractmethod
    async def since(self, room: str, last_id: str) -> list[tuple[str, str]] | None:
        """The events of `room` after `last_id`, oldest first, as (id, frame without id).

        None when `last_id` is not in the history any more, or never was: the client must
        resync, since some events it missed are gone.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Release connections."""


class LocalHistory(History):
    """This process only, in memory: one bounded deque per room, ids counted from 1.

    Lost on restart, and not shared between processes: ids are `epoch-n`, the epoch being
    when this history began, so an id from another life or process is unknown (resync).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._events: dict[str, deque[tuple[int, str]]] = {}
        self._last: dict[str, int] = {}
        # Ids of an earlier life of this process (or another process) never match.
        self._epoch = str(time.time_ns() // 1000)

    def append(self, room: str, frame: str) -> str:
        """Record `frame` (without its id) as the room's newest event; return its id."""
        number = self._last.get(room, 0) + 1
        self._last[room] = number
        events = self._events.get(room)
        if events is None:
            events = self._events[room] = deque(maxlen=self.size)
        events.append((number, frame))
        return f"{self._epoch}-{number}"

    async def since(self, room: str, last_id: str) -> list[tuple[str, str]] | None:
        epoch, _, number_text = last_id.rpartition("-")
        if epoch != self._epoch or not number_text.isdigit():
            return None
        number = int(number_text)
        last = self._last.get(room, 0)
        events = self._events.get(room)
        if number > last:
            return None
        if number == last:
            return []
        # Known only if the event right after it is still held.
        if events is None or events[0][0] > number + 1:
            return None
        return [(f"{self._epoch}-{n}", frame) for n, frame in events if n > number]


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


IdentifyRequest = Callable[[Request], Awaitable[Identity]]
CheckRoom = Callable[[str], None]


async def anonymous_request(request: Request) -> Identity:
    """The identity of every HTTP client when the service has no authentication."""
    return Identity("anonymous")


def http_user(identify: Identify) -> IdentifyRequest:
    """The handshake check (auth) for the HTTP routes: a refusal becomes the same 401/403."""

    async def identity(request: Request) -> Identity:
        try:
            return await identify(request)
        except HandshakeRefused as refusal:
            # GET /sse or POST /publish.
            transport: Transport = "sse" if request.method == "GET" else "http"
            log_connection_refused(transport, refusal.status_code, refusal.detail, request.client)
            raise HTTPException(refusal.status_code, refusal.detail, refusal.headers) from None

    return identity


def _forbid_unless(
    require: Callable[[Grants | None, str], None], identity: Identity, room: str
) -> None:
    """403 where a WebSocket client would get a `forbidden` error frame."""
    try:
        require(identity.grants, room)
    except ProtocolError as error:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"{error.code}: {error.detail}") from None


def only_the_default_room(room: str) -> None:
    """Without the rooms feature there is one broadcast channel."""
    if room != DEFAULT_ROOM:
        raise ProtocolError("invalid_room", f"this service has one room, {DEFAULT_ROOM!r}")


class PublishBody(BaseModel):
    """The body of `POST /publish`, refused exactly where a WebSocket `publish` would be."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # Any JSON value; its schema inline, as OpenAPI cannot refer to JsonValue's `$defs` entry.
    data: Annotated[JsonValue, WithJsonSchema({})]
    room: str = DEFAULT_ROOM
    key: str | None = Field(default=None, min_length=1, max_length=MAX_KEY_LENGTH)

    @classmethod
    def parse(cls, body: bytes) -> PublishBody:
        """The body read by the WebSocket's parser (protocol.py), not FastAPI's `json.loads`,
        which takes NaN and lone surrogates, and whose 422 for `1e400` fails to render (500)."""
        return validated(cls, parse_json(body))


# FastAPI documents only the bodies it parses itself.
_PUBLISH_BODY_DOCS = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PublishBody.model_json_schema()}},
    }
}


class StreamState(enum.Enum):
    REPLAYING = "replaying"
    LIVE = "live"
    ENDED = "ended"


class EventStream(Response):
    """One SSE client: replay after its cursor, then the live frames the hub gives it.

    The stream is its connection's `Transport` (hub.py): it writes only by awaiting the ASGI
    `send`, in the writer task, and has no heartbeat (its comment pings are its own)."""

    media_type = "text/event-stream"
    heartbeat: ClassVar[bool] = False
    can_write_now: ClassVar[bool] = False

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
        self.state = StreamState.REPLAYING
        self._send: Send | None = None
        # Ids replayed from the history that may also arrive live: each is dropped once. Not
        # "every id up to the cursor", which would hold only while ids are given in delivery
        # order: true of both histories here, but not a promise a History makes.
        self._replayed: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._send = send
        sse, settings = self.sse, self.sse.hub_settings
        connection = Connection(
            self,
            sse.hub.scheduler,
            user=self.identity.user,
            outbox_limit=settings.outbox_limit,
            policy=settings.slow_consumer_policy,
            batch_bytes=settings.batch_bytes,
        )
        # Members first, then the history: what is published meanwhile is queued in the outbox
        # and either replayed or live, never neither; `_replayed` drops what would be both.
        sse.hub.add(connection)
        sse.streams.add(connection)
        # Expired credentials end the stream, as they close a WebSocket.
        expiry = close_on_expiry(connection, self.identity)
        tasks: list[asyncio.Task[None]] = []
        started: float | None = None
        try:
            for room in self.rooms:
                sse.hub.join(connection, room)
            try:
                await sse.listening(self.rooms)
            except ProtocolError as unavailable:
                log_connection_refused("sse", 503, unavailable.detail, scope.get("client"))
                await send({"type": "http.response.start", "status": 503, "headers": []})
                await send({"type": "http.response.body", "body": unavailable.detail.encode()})
                return
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            started = log_connection_opened(connection, "sse", scope.get("client"))
            await self._write(f"retry: {sse.settings.retry_milliseconds}\n\n")
            tasks = [
                asyncio.create_task(self._deliver(connection), name=f"writer-{connection.id}"),
                asyncio.create_task(self._ping(connection), name=f"ping-{connection.id}"),
                asyncio.create_task(_disconnected(receive), name=f"receive-{connection.id}"),
            ]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Nothing here awaits: cleanup must also complete when this task is cancelled.
            self.state = StreamState.ENDED
            if expiry is not None:
                expiry.cancel()
            for task in tasks:
                task.cancel()
            if started is not None:
                log_connection_closed(connection, "sse", started)
            sse.streams.discard(connection)
            sse.hub.remove(connection)
        await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled() and (error := task.exception()) is not None:
                logger.debug("%s ended by %r", task.get_name(), error)
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

    async def _deliver(self, connection: Connection) -> None:
        """The missed events, then the live ones: the only code that writes events."""
        try:
            await self._replay()
        except ProtocolError as unavailable:  # the history did not answer: resume later
            connection.close(status.WS_1013_TRY_AGAIN_LATER, unavailable.detail)
            return
        self.state = StreamState.LIVE
        # Cancelling this task (the stream ends) cancels the writer it waits for.
        await connection.start_writer()

    async def _replay(self) -> None:
        missed: list[tuple[tuple[int, ...], str, str, str]] = []
        lost: list[str] = []
        if any(room in self.cursor for room in self.rooms):
            SSE_RESUMES.inc()
        for room in self.rooms:
            last_id = self.cursor.get(room)
            if last_id is None:
                continue
            events = await self.sse.history.since(room, last_id) if last_id else None
            if events is None:
                lost.append(room)
                del self.cursor[room]
                continue
            missed += [(order(event_id), room, event_id, frame) for event_id, frame in events]
        if lost:
            SSE_RESYNCS.inc(len(lost))
            detail = "events were missed and are no longer kept: reload the state of these rooms"
            frame = encode({"type": RESYNC, "rooms": lost, "detail": detail})
            await self._write(f"event: {RESYNC}\ndata: {frame}\n\n")
        for _, room, event_id, frame in sorted(missed):
            self._replayed.add(event_id)
            await self._write(self._event("message", room, event_id, with_id(frame, event_id)))

    def _event(self, event: str, room: str, event_id: str, frame: str) -> str:
        # The cursor only moves forward, so a resume never replays what was already sent.
        seen = self.cursor.get(room)
        if seen is None or order(event_id) > order(seen):
            self.cursor[room] = event_id
        return f"id: {urlencode(self.cursor)}\nevent: {event}\ndata: {frame}\n\n"

    def try_write(self, frames: list[Frame]) -> bool:
        return False  # an ASGI send is awaited: the writer task writes every batch

    async def write(self, frames: list[Frame]) -> None:
        """Hub frames become SSE events, in one write."""
        text = "".join([self._event_for(frame) for frame in frames])
        if text:
            await self._write(text)

    def _event_for(self, frame: Frame) -> str:
        """The SSE text of one hub frame; empty for frames the stream has sent already."""
        if frame.type == _COMMENT:
            # A ping interval after the replay, every message stored before it was read has
            # long reached the broker: none can arrive twice any more.
            self._replayed.clear()
            return f": {frame.text}\n\n"
        room, event_id = frame.room, frame.event_id
        if room is None or event_id is None:
            return f"event: {frame.type}\ndata: {frame.text}\n\n"
        if self._replayed and event_id in self._replayed:
            self._replayed.discard(event_id)
            return ""
        seen = self.cursor.get(room)
        if seen is not None and order(event_id) <= order(seen):
            # Sent already: a broker filling its gap after an outage repeats what it missed,
            # which a stream that opened meanwhile may have replayed from the history.
            return ""
        return self._event(frame.type, room, event_id, frame.text)

    async def _write(self, text: str) -> None:
        assert self._send is not None
        await self._send({"type": "http.response.body", "body": text.encode(), "more_body": True})

    async def _ping(self, connection: Connection) -> None:
        while True:
            await asyncio.sleep(self.sse.settings.ping_interval_seconds)
            connection.offer(_COMMENT_PING)


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


class ServerSentEvents:
    """The `/sse` and `/publish` routes, and the open streams of this process."""

    def __init__(
        self,
        hub: Hub,
        publisher: Publisher,
        history: History,
        settings: SseSettings,
        hub_settings: HubSettings,
        *,
        identify: IdentifyRequest = anonymous_request,
        check_room: CheckRoom = only_the_default_room,
        listening: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.hub = hub
        self.publisher = publisher
        self.history = history
        self.settings = settings
        self.hub_settings = hub_settings
        self.identify = identify
        self.check_room = check_room
        self._listening = listening
        self.streams: set[Connection] = set()
        self._restore: dict[int, Any] = {}

    async def listening(self, rooms: list[str]) -> None:
        """Wait until this process hears the rooms (a Redis subscription is confirmed)."""
        if self._listening is not None:
            for room in rooms:
                await self._listening(room)

    def router(self) -> APIRouter:
        router = APIRouter(tags=["sse"])
        identify = self.identify

        # The status only documents the route (EventStream sets its own); without it FastAPI
        # looks for a default in EventStream's signature, finds none and fails /openapi.json.
        @router.get("/sse", response_class=EventStream, status_code=status.HTTP_200_OK)
        async def stream(request: Request, identity: Identity = Depends(identify)) -> EventStream:
            rooms = list(dict.fromkeys(request.query_params.getlist("room"))) or [DEFAULT_ROOM]
            if len(rooms) > self.settings.max_rooms_per_stream:
                raise HTTPException(
                    status.HTTP_422_UNPROCESSABLE_CONTENT,
                    f"a stream may follow {self.settings.max_rooms_per_stream} rooms",
                )
            for room in rooms:
                self._check(room)
                _forbid_unless(require_join, identity, room)
            cursor = parse_cursor(
                request.headers.get("last-event-id") or request.query_params.get("lastEventId"),
                rooms,
            )
            return EventStream(self, identity, rooms, cursor)

        @router.post("/publish", openapi_extra=_PUBLISH_BODY_DOCS)
        async def publish(
            request: Request, identity: Identity = Depends(identify)
        ) -> dict[str, object]:
            try:
                body = PublishBody.parse(await request.body())
            except ProtocolError as error:
                raise HTTPException(
                    status.HTTP_422_UNPROCESSABLE_CONTENT, f"{error.code}: {error.detail}"
                ) from None
            self._check(body.room)
            _forbid_unless(require_publish, identity, body.room)
            try:
                event_id = await self.publisher.publish(
                    body.room, identity.user, body.data, body.key
                )
            except AlreadyPublished as duplicate:  # a retry: done already, and not again
                return {"room": body.room, "id": duplicate.event_id, "duplicate": True}
            except ProtocolError as error:
                # 422: no frame can carry it; 503: not sent, try again; 504: sent, fate
                # unknown, retry with the same key.
                code = status.HTTP_503_SERVICE_UNAVAILABLE
                if error.code == ErrorCode.INVALID_JSON:
                    code = status.HTTP_422_UNPROCESSABLE_CONTENT
                elif isinstance(error, PublishOutcomeUnknown):
                    code = status.HTTP_504_GATEWAY_TIMEOUT
                raise HTTPException(code, f"{error.code}: {error.detail}") from None
            return {"room": body.room, "id": event_id}

        return router

    def _check(self, room: str) -> None:
        try:
            self.check_room(room)
        except ProtocolError as error:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, f"{error.code}: {error.detail}"
            ) from None

    def close_all(self) -> None:
        """End every open stream; the client's EventSource reconnects (elsewhere)."""
        for connection in tuple(self.streams):
            connection.close(status.WS_1012_SERVICE_RESTART, "server shutting down")

    def watch_exit_signals(self) -> None:
        """End the streams as soon as the server is told to exit, then let it handle that.

        Only in the main thread, where the server installed its handlers; `unwatch_exit_signals`
        puts them back.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(signum)
            if not callable(previous):
                continue

            def on_exit(
                number: int, frame: FrameType | None, previous: Callable[..., Any] = previous
            ) -> None:
                loop.call_soon_threadsafe(self.close_all)
                previous(number, frame)

            signal.signal(signum, on_exit)
            self._restore[signum] = previous

    def unwatch_exit_signals(self) -> None:
        for signum, previous in self._restore.items():
            with contextlib.suppress(ValueError):
                signal.signal(signum, previous)
        self._restore.clear()
