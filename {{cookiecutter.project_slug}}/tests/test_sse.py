"""Server-Sent Events against a real uvicorn: ids in order, Last-Event-ID resume, the resync
event, publish over HTTP reaching WebSocket and SSE subscribers, slow and vanished clients,
and shutdown with streams open."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl

import httpx2
import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.history import UNKNOWN_POSITION, LocalHistory, order, parse_cursor
from {{ cookiecutter.package_name }}.protocol import DEFAULT_ROOM
from {{ cookiecutter.package_name }}.settings import Settings
from {{ cookiecutter.package_name }}.sse import ServerSentEvents
{% if cookiecutter.auth != "none" %}
from .conftest import TEST_SECRET, Server, StartServer, free_port, sign_in
{%- else %}
from .conftest import Server, StartServer, free_port
{%- endif %}
from .messages import next_message
from .test_bounded_resources import TINY_BUFFER, poll, server_side_established

pytestmark = pytest.mark.anyio

ROOM = DEFAULT_ROOM
# How long anything that should be quick may take: an event arriving, a stream opening.
SOON = 10.0


class Stream:
    """One open `/sse` response, read event by event."""

    def __init__(self, events: AsyncIterator[httpx2.ServerSentEvent], response: Any) -> None:
        self._events = events
        self.response = response

    async def next(self) -> httpx2.ServerSentEvent:
        return await asyncio.wait_for(anext(self._events), timeout=SOON)

    async def until_the_end(self, most: int = 1000) -> list[httpx2.ServerSentEvent]:
        """The events (pings included, `most` at most) until the server ends the stream."""
        events = []
        for _ in range(most):
            try:
                events.append(await self.next())
            except StopAsyncIteration:
                assert events, "the stream ended without a last event"
                return events
        raise AssertionError(f"the stream did not end within {most} events: {events[-3:]}")

    async def next_message(self) -> tuple[str, dict[str, Any]]:
        """The next `message` event: its SSE id (the cursor) and its frame."""
        while True:
            event = await self.next()
            if event.event == "message" and event.data:
                frame: dict[str, Any] = json.loads(event.data)
                return event.id, frame


@asynccontextmanager
async def open_stream(
    server: Server, *, last_event_id: str | None = None, rooms: tuple[str, ...] = ()
) -> AsyncIterator[Stream]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    params = {"room": list(rooms)}
    async with (
        server.http_client(timeout=SOON) as client,
        client.sse("/sse", headers=headers, params=params) as source,
    ):
        events = aiter(source)
        stream = Stream(events, source.response)
        # The first event is the retry hint, sent once the stream is subscribed.
        first = await stream.next()
        assert first.retry is not None
        yield stream


async def post(
    server: Server, data: object, room: str = ROOM, client: httpx2.AsyncClient | None = None
) -> str:
    """Publish over HTTP (on a client of its own unless given one); return the event id."""
    if client is None:
        async with server.http_client(timeout=SOON) as own:
            return await post(server, data, room, own)
    response = await client.post("/publish", json={"room": room, "data": data})
    assert response.status_code == 200, response.text
    event_id: str = response.json()["id"]
    return event_id


async def test_events_arrive_with_ids_in_order(start_server: StartServer) -> None:
    server = start_server()
    async with open_stream(server) as stream:
        assert stream.response.headers["cache-control"] == "no-cache"
        assert stream.response.headers["x-accel-buffering"] == "no"
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        posted = [await post(server, n) for n in range(20)]
        received = [await stream.next_message() for _ in range(20)]

    assert [frame["data"] for _, frame in received] == list(range(20))
    assert [frame["id"] for _, frame in received] == posted, "the ids the publisher got"
    assert sorted(posted, key=order) == posted
    assert len(set(posted)) == 20
    for cursor, frame in received:
        assert dict(parse_qsl(cursor)) == {ROOM: frame["id"]}
        assert frame["type"] == "message"
        assert frame["room"] == ROOM


async def test_concurrent_publishes_all_arrive(start_server: StartServer) -> None:
    # With Redis, an id is given (XADD) before the message is published, so concurrent
    # publishes may arrive in an order other than their ids': none may be dropped for it.
    server = start_server()
    async with open_stream(server) as stream, server.http_client(timeout=SOON) as client:
        posted = await asyncio.gather(*(post(server, n, client=client) for n in range(50)))
        received = [await stream.next_message() for _ in range(50)]
    assert sorted(frame["id"] for _, frame in received) == sorted(posted)


async def test_resume_with_last_event_id_gets_exactly_the_missed_events(
    start_server: StartServer,
) -> None:
    server = start_server()
    async with open_stream(server) as stream:
        for n in range(3):
            await post(server, n)
        seen = [await stream.next_message() for _ in range(3)]
    last_cursor = seen[-1][0]
    missed = [await post(server, n) for n in range(3, 8)]

    async with open_stream(server, last_event_id=last_cursor) as stream:
        replayed = [await stream.next_message() for _ in range(5)]
        live = await post(server, 8)
        after = await stream.next_message()

    assert [frame["id"] for _, frame in replayed] == missed
    assert [frame["data"] for _, frame in replayed] == [3, 4, 5, 6, 7]
    assert after[1]["id"] == live, "then the live stream, with nothing repeated in between"
    assert after[1]["data"] == 8


async def test_an_id_older_than_the_history_gets_the_resync_event(
    start_server: StartServer,
) -> None:
    # Redis trims its streams in whole nodes (about 100 entries), so publish well past that.
    server = start_server(SSE_HISTORY_SIZE="3")
    async with server.http_client(timeout=SOON) as client:
        first = await post(server, 0, client=client)
        for n in range(1, 250):
            await post(server, n, client=client)

    for stale in (f"{ROOM}={first}", f"{ROOM}=999999999999-1", f"{ROOM}=nonsense"):
        async with open_stream(server, last_event_id=stale) as stream:
            event = await stream.next()
            assert event.event == "resync", stale
            assert json.loads(event.data)["rooms"] == [ROOM]
            # The stream goes on live.
            live = await post(server, "live")
            assert (await stream.next_message())[1]["id"] == live


async def test_publish_over_http_reaches_websocket_and_sse_subscribers(
    start_server: StartServer,
) -> None:
    server = start_server()
    async with server.connect() as ws, open_stream(server) as stream:
        welcome = await next_message(ws, SOON)
        assert welcome["type"] == "welcome"

        event_id = await post(server, {"text": "over http"})
        over_ws = await next_message(ws, SOON)
        _, over_sse = await stream.next_message()
        assert over_ws == over_sse
        assert over_ws["id"] == event_id
        assert over_ws["data"] == {"text": "over http"}

        # And the other way: a WebSocket publish reaches the SSE subscriber, with its id.
        await ws.send(json.dumps({"type": "publish", "data": "over ws"}))
        echo = await next_message(ws, SOON)
        _, from_ws = await stream.next_message()
        assert from_ws == echo
        assert from_ws["data"] == "over ws"
        assert order(from_ws["id"]) > order(event_id)


async def test_invalid_rooms_are_refused_before_streaming(start_server: StartServer) -> None:
    server = start_server()
    async with server.http_client(timeout=SOON) as client:
        response = await client.get("/sse", params={"room": "no such room!"})
        assert response.status_code == 422
        response = await client.post("/publish", json={"room": "no such room!", "data": 1})
        assert response.status_code == 422


# json.loads takes the first six (FastAPI relayed them: NaN to every client, and a lone
# surrogate that closed every member of the room): the same rules as a WebSocket frame's.
UNSENDABLE_BODIES = [
    b'{"data": NaN}',
    b'{"data": [Infinity]}',
    b'{"data": -Infinity}',
    b'{"data": 1e400}',
    b'{"data": "\\ud800"}',
    b'{"data": {"\\udc00": 1}}',
    b'{"data": ' + b"[" * 64 + b"]" * 64 + b"}",
    b'{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"data": "\xff"}',
    b"not json",
]


async def test_publish_refuses_what_no_frame_can_carry_with_a_json_422(
    start_server: StartServer,
) -> None:
    server = start_server()
    async with server.connect() as ws, server.http_client(timeout=SOON) as client:
        assert (await next_message(ws, SOON))["type"] == "welcome"
        for body in UNSENDABLE_BODIES:
            response = await client.post(
                "/publish", content=body, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 422, (body[:40], response.text)
            detail = response.json()["detail"]
            assert detail.startswith(("invalid_json: ", "invalid_fields: ")), detail
        # Nothing reached the room: the next message is the next good publish.
        event_id = await post(server, "after", client=client)
        assert (await next_message(ws, SOON))["id"] == event_id


async def test_comment_pings_keep_an_idle_stream_open(start_server: StartServer) -> None:
    # With heartbeats the pings follow HEARTBEAT_INTERVAL_SECONDS, and a stream must survive
    # the heartbeat's sweep of silent connections: a stream has nothing to answer with.
    fast = {"SSE_PING_INTERVAL_SECONDS": "0.1", "HEARTBEAT_INTERVAL_SECONDS": "0.1"}
    server = start_server(**fast, HEARTBEAT_TIMEOUT_SECONDS="0.1")
    async with (
        server.http_client(timeout=SOON) as client,
        client.stream("GET", "/sse") as response,
    ):
        lines = response.aiter_lines()
        assert await anext(lines) == "retry: 3000"
        pings = 0
        while pings < 10:  # a second's worth: the sweep would have closed a silent client
            pings += await asyncio.wait_for(anext(lines), SOON) == ": ping"
        event_id = await post(server, "after pings")
        while not (line := await asyncio.wait_for(anext(lines), SOON)).startswith("data: "):
            pass
        assert json.loads(line.removeprefix("data: "))["id"] == event_id


def stalled_stream(server: Server) -> socket.socket:
    """A client that asks for the stream and then never reads a byte."""
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=SOON)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    query = "&".join(f"{name}={value}" for name, value in server.http_params.items())
    headers = "".join(f"{name}: {value}\r\n" for name, value in server.http_headers.items())
    raw.sendall(
        f"GET /sse?{query} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Accept: text/event-stream\r\n{headers}\r\n".encode()
    )
    return raw


def connection_count(server: Server) -> int:
    count: int = httpx2.get(f"{server.http_url}/readyz", timeout=SOON).json()["connections"]
    return count


async def wait_for_connections(server: Server, expected: int) -> None:
    for _ in range(100):
        if connection_count(server) == expected:
            return
        await asyncio.sleep(0.1)
    assert connection_count(server) == expected


async def test_a_stream_that_stops_reading_delays_nobody_and_is_dropped(
    start_server: StartServer,
) -> None:
    server = start_server(HUB_OUTBOX_LIMIT="32")
    stalled = stalled_stream(server)
    try:
        await wait_for_connections(server, 1)
        payload = "x" * 30_000
        count = 500  # 15 MB: more than the stalled socket's buffers and outbox can hold
        async with (
            open_stream(server) as healthy,
            server.http_client(timeout=SOON) as client,
        ):
            received = []
            for n in range(count):
                await post(server, [n, payload], client=client)
                received.append((await healthy.next_message())[1]["data"][0])
            assert received == list(range(count)), "the healthy stream got all, in order"
            await wait_for_connections(server, 1)  # the stalled one was closed and forgotten
    finally:
        stalled.close()


async def test_a_closed_stream_is_forgotten_promptly(start_server: StartServer) -> None:
    server = start_server()
    async with open_stream(server, rooms=()):
        assert connection_count(server) == 1
    await wait_for_connections(server, 0)


async def test_a_stalled_stream_ended_by_the_server_has_its_socket_released(
    start_server: StartServer,
) -> None:
    server = start_server(
        HUB_OUTBOX_LIMIT="8", HUB_CLOSE_TIMEOUT_SECONDS="0.5", SERVER_SHUTDOWN_TIMEOUT_SECONDS="5"
    )
    # A receive buffer set before connecting, so that the kernel holds a few kilobytes for it.
    stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, TINY_BUFFER)
    stalled.settimeout(SOON)
    stalled.connect(("127.0.0.1", server.port))
    query = "&".join(f"{name}={value}" for name, value in server.http_params.items())
    headers = "".join(f"{name}: {value}\r\n" for name, value in server.http_headers.items())
    stalled.sendall(
        f"GET /sse?{query} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Accept: text/event-stream\r\n{headers}\r\n".encode()
    )
    await wait_for_connections(server, 1)
    assert server_side_established(server, stalled)
    payload = "x" * 30_000
    async with server.http_client(timeout=SOON) as client:
        for n in range(1000):  # up to 30 MB
            await post(server, [n, payload], client=client)
            if n % 10 == 9 and connection_count(server) == 0:
                break
    assert connection_count(server) == 0, "the stalled stream was ended as a slow consumer"
    # Its last event cannot get out: the server drops the socket, fd and buffers at once.
    await poll(lambda: not server_side_established(server, stalled), "released (ss -tn)")
    assert server.stop() in (0, -signal.SIGTERM), server.output()
    assert "timeout graceful shutdown exceeded" not in server.output(), server.output()
    stalled.close()


@asynccontextmanager
async def serve_here(settings: Settings) -> AsyncIterator[tuple[str, Any]]:
    """uvicorn in this event loop, so the test can count the server's own tasks."""
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{config.port}", app
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, SOON)


async def test_a_thousand_streams_opened_and_closed_leave_no_tasks_behind() -> None:
    async with serve_here(Settings()) as (base_url, app):

        async def cycles(count: int) -> None:
            async with httpx2.AsyncClient(base_url=base_url, timeout=SOON) as client:
                for _ in range(count):
                    async with client.stream("GET", "/sse") as response:
                        async for chunk in response.aiter_text():
                            assert chunk.startswith("retry:")
                            break

        async def settled(most: int | None = None) -> int:
            """The number of tasks once every stream is gone (and at most `most` run)."""
            for _ in range(200):
                tasks = len(asyncio.all_tasks())
                if len(app.state.hub) == 0 and (most is None or tasks <= most):
                    break
                await asyncio.sleep(0.05)
            return tasks

        await cycles(5)
        baseline = await settled()
        await cycles(1000)
        assert await settled(baseline) <= baseline
        assert len(app.state.hub) == 0
        assert app.state.hub.rooms == {}
        (sse,) = (
            feature for feature in app.state.features if isinstance(feature, ServerSentEvents)
        )
        assert sse.streams == set()


async def test_a_stream_routes_a_frame_by_the_room_and_id_beside_it_not_by_its_json() -> None:
    # The hub hands each stream the frame's room and event id as data: no stream parses a
    # frame's JSON (once per stream) to find them. Here the JSON says otherwise, and is ignored.
    async with (
        serve_here(Settings()) as (base_url, app),
        httpx2.AsyncClient(base_url=base_url, timeout=SOON) as client,
        client.sse("/sse") as source,
    ):
        events = aiter(source)
        assert (await asyncio.wait_for(anext(events), SOON)).retry is not None
        text = json.dumps({"type": "note", "room": "elsewhere", "id": "1-1"})
        assert app.state.hub.deliver(ROOM, text, "7-3") == 1
        event = await asyncio.wait_for(anext(events), SOON)
        assert (event.event, event.data) == ("message", text)
        assert dict(parse_qsl(event.id)) == {ROOM: "7-3"}
        resync = json.dumps({"type": "note"})
        app.state.hub.deliver(ROOM, resync, type="resync")
        event = await asyncio.wait_for(anext(events), SOON)
        assert (event.event, event.data) == ("resync", resync), "named by its type, not its JSON"


{%- if cookiecutter.use_rooms %}


async def test_one_broadcast_gives_every_stream_its_own_cursor() -> None:
    # Streams of one room share the text of a broadcast's event (made once, not per stream);
    # a stream of two rooms must still get both rooms' positions in its id.
    async with (
        serve_here(Settings()) as (base_url, app),
        httpx2.AsyncClient(base_url=base_url, timeout=SOON) as client,
        client.sse("/sse", params={"room": ROOM}) as one,
        client.sse("/sse", params={"room": ROOM}) as same,
        client.sse("/sse", params={"room": ["other", ROOM]}) as two,
    ):
        streams = [aiter(source) for source in (one, same, two)]
        for events in streams:
            assert (await asyncio.wait_for(anext(events), SOON)).retry is not None
        assert app.state.hub.deliver("other", json.dumps({"n": 1}), "5-1") == 1
        assert app.state.hub.deliver(ROOM, json.dumps({"n": 2}), "7-3") == 3
        cursors = []
        for events in streams:
            event = await asyncio.wait_for(anext(events), SOON)
            if dict(parse_qsl(event.id)) == {"other": "5-1"}:
                event = await asyncio.wait_for(anext(events), SOON)
            assert json.loads(event.data) == {"n": 2}
            cursors.append(dict(parse_qsl(event.id)))
    assert cursors == [{ROOM: "7-3"}, {ROOM: "7-3"}, {"other": "5-1", ROOM: "7-3"}]
{%- endif %}


async def test_sigterm_ends_open_streams_and_the_server_exits(start_server: StartServer) -> None:
    # uvicorn would wait for the stream up to its graceful timeout: a minute here.
    server = start_server(SERVER_SHUTDOWN_TIMEOUT_SECONDS="60")
    async with open_stream(server) as stream:
        stopping = asyncio.create_task(asyncio.to_thread(server.stop, 15.0))
        last = (await stream.until_the_end())[-1]
        assert last.event == "close"
        assert json.loads(last.data)["code"] == 1012, "service restart: reconnect"
        # uvicorn exits by raising the signal again once it has shut down.
        assert await stopping in (0, -signal.SIGTERM)
    assert "Cancel" not in server.output(), "streams ended by themselves, not by cancelling"


async def test_the_local_history_answers_since() -> None:
    history = LocalHistory(size=3)
    frames = [json.dumps({"n": n}) for n in range(5)]
    ids = [history.append("a", frame) for frame in frames]
    assert await history.since("a", ids[1]) == [(ids[n], frames[n]) for n in (2, 3, 4)]
    assert await history.since("a", ids[4]) == []
    assert await history.since("a", ids[0]) is None, "too old: ids[1] is gone"
    assert await history.since("b", ids[0]) is None, "not this room's"
    assert await history.since("a", "1-1") is None, "another life's"


def test_only_a_cursor_of_the_stream_s_rooms_is_read_as_one() -> None:
    rooms = ["a", "b"]
    assert parse_cursor(None, rooms) == {}
    assert parse_cursor("", rooms) == {}
    assert parse_cursor("a=1-2&b=3-4", rooms) == {"a": "1-2", "b": "3-4"}
    assert parse_cursor("b=3-4", rooms) == {"b": "3-4"}, "a room with no event yet"
    unknown = dict.fromkeys(rooms, UNKNOWN_POSITION)
    garbage = ["garbage", "a=", "=1-2", "c=1-2", "a=1-2&c=1-2", "a=1-2&a=1-3", "a=x-1", "a=1"]
    garbage += ["a=1-2-3", "a=1\u00b2-2", "a=1-2&b=3-4&a=5-6", "a=1-2;b=3-4", "&", "a=1-2&"]
    for value in garbage:
        assert parse_cursor(value, rooms) == unknown, value


@settings(max_examples=300, database=None)
@given(value=st.text(alphabet=st.sampled_from("ab=&-;%+ 01239\u00b2x"), max_size=24) | st.text())
def test_any_last_event_id_is_a_cursor_of_the_stream_or_unknown_for_every_room(
    value: str,
) -> None:
    rooms = ["a", "b"]
    cursor = parse_cursor(value, rooms)
    if cursor and set(cursor.values()) != {UNKNOWN_POSITION}:
        assert set(cursor) <= set(rooms)
        assert all(re.fullmatch(r"[0-9]+-[0-9]+", last_id) for last_id in cursor.values())
    else:
        assert cursor in ({}, dict.fromkeys(rooms, UNKNOWN_POSITION))
        assert (cursor == {}) == (value == "")


@asynccontextmanager
async def open_stream_at(server: Server, cursor: str, *, in_query: bool) -> AsyncIterator[Stream]:
    """A stream resuming at `cursor`: in `Last-Event-ID`, or in `?lastEventId=`."""
    if not in_query:
        async with open_stream(server, last_event_id=cursor) as stream:
            yield stream
        return
    async with (
        server.http_client(timeout=SOON) as client,
        client.sse("/sse", params={"lastEventId": cursor}) as source,
    ):
        stream = Stream(aiter(source), source.response)
        assert (await stream.next()).retry is not None
        yield stream


async def test_a_cursor_that_is_not_one_gets_exactly_one_resync_then_the_live_stream(
    start_server: StartServer,
) -> None:
    server = start_server()
    known = await post(server, "before")
    epoch = known.partition("-")[0]
    not_cursors = [
        "garbage",
        "r=",
        f"{ROOM}=",
        f"={known}",
        f"{ROOM}=nonsense",
        f"{ROOM}={known}x",
        f"other={known}",  # a room this stream does not follow
        f"{ROOM}={known}&other={known}",
        f"{ROOM}={known}&{ROOM}={known}",
        f"{ROOM}={epoch}-\u00b2",  # a digit to str.isdigit, not to int()
    ]
    for cursor in not_cursors:
        # A header value is latin-1 on the wire: the one non-ASCII cursor goes in the query.
        for in_query in (False, True) if cursor.isascii() else (True,):
            async with open_stream_at(server, cursor, in_query=in_query) as stream:
                first = await stream.next()
                assert first.event == "resync", (cursor, in_query, first)
                assert json.loads(first.data)["rooms"] == [ROOM], cursor
                live = await post(server, "live")
                second = await stream.next()
                assert second.event == "message", (cursor, in_query, second)
                assert json.loads(second.data)["id"] == live
    # A true cursor still resumes with no resync.
    async with open_stream_at(server, f"{ROOM}={live}", in_query=False) as stream:
        after = await post(server, "after")
        event = await stream.next()
        assert (event.event, json.loads(event.data)["id"]) == ("message", after)
{%- if cookiecutter.auth != "none" %}


async def test_the_stream_and_publish_check_credentials_as_the_websocket_does(
    start_server: StartServer,
) -> None:
    server = start_server()
    async with httpx2.AsyncClient(base_url=server.http_url, timeout=SOON) as stranger:
        assert (await stranger.get("/sse")).status_code == 401
        refused = await stranger.post("/publish", json={"room": ROOM, "data": "intruder"})
        assert refused.status_code in (401, 403)
    assert connection_count(server) == 0
    async with open_stream(server) as stream:
        event_id = await post(server, "member")
        _, frame = await stream.next_message()
        assert frame["data"] == "member"
        assert frame["sender"] == "tester"
        assert frame["id"] == event_id


async def test_a_stream_ends_with_a_close_event_when_its_credentials_expire(
    start_server: StartServer,
) -> None:
    server = start_server()
    sign_in(server, TEST_SECRET, seconds=2)
    async with open_stream(server) as stream:
        last = (await stream.until_the_end())[-1]
    assert last.event == "close"
    assert json.loads(last.data) == {"type": "close", "code": 4001, "reason": "session expired"}
    await wait_for_connections(server, 0)
    async with server.http_client(timeout=SOON) as client:
        assert (await client.get("/sse")).status_code == 401, "the browser's retry is refused"
{%- endif %}
