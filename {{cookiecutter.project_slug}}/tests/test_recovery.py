"""Recovery over WebSocket against a real uvicorn: a client back with the last event id it saw
gets exactly what it missed, in order, then the live messages, with no gap and no duplicate at
the seam, or a `resync` when they are gone; idle rooms' histories expire."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import pytest
{%- if cookiecutter.use_rooms %}
from fastapi.testclient import TestClient
{%- endif %}
from websockets.asyncio.client import ClientConnection, connect
{% if cookiecutter.use_rooms %}
from {{ cookiecutter.package_name }}.app import create_app
{%- endif %}
from {{ cookiecutter.package_name }}.history import LocalHistory, Recovery
from {{ cookiecutter.package_name }}.hub import Connection, Hub
{%- if cookiecutter.use_rooms %}
from {{ cookiecutter.package_name }}.permissions import RoomGrants
{%- endif %}
from {{ cookiecutter.package_name }}.protocol import DEFAULT_ROOM
{%- if cookiecutter.use_rooms %}
from {{ cookiecutter.package_name }}.settings import Settings
{%- endif %}

from . import transports
from .conftest import Server, StartServer, ws_client
from .messages import next_message{% if cookiecutter.use_rooms %}, receive{% endif %}

pytestmark = pytest.mark.anyio


async def nothing_to_wait_for(room: str) -> None:
    return None


async def test_a_message_published_right_after_a_resuming_connect_comes_after_the_replay() -> None:
    # The order of a real connect with `?since=`: the join and `resume_later` in one step
    # (on_open), then, before the catch-up task first runs, another client's publish.
    hub, history = Hub(), LocalHistory(size=10)
    stamped = [(history.append(DEFAULT_ROOM, json.dumps({"n": n})), n) for n in range(3)]
    socket = transports.Recorder()
    connection = Connection(socket, hub.scheduler, user="u", outbox_limit=64)
    hub.add(connection)
    connection.start_writer()
    hub.join(connection, DEFAULT_ROOM)
    recovery = Recovery(hub, history, nothing_to_wait_for)
    recovery.resume_later(connection, {DEFAULT_ROOM: stamped[0][0]})
    live_id = history.append(DEFAULT_ROOM, json.dumps({"n": 3}))
    hub.deliver(DEFAULT_ROOM, json.dumps({"n": 3, "id": live_id}), live_id)
    for _ in range(100):  # bounded: the catch-up and the writer run within a few loop turns
        await asyncio.sleep(0.01)
        if len(socket.frames) >= 3:
            break
    assert [json.loads(frame)["n"] for frame in socket.frames] == [1, 2, 3], socket.frames
    hub.remove(connection)


# Publishes come faster than the default rate limit allows a client.
FAST_PUBLISHER = {"HUB_RATE_PER_SECOND": "2000", "HUB_RATE_BURST": "2000"}


def resuming(server: Server, since: str | None, query: str = "") -> connect:
    """A client of `server` that connects with `?since=` (and `query`)."""
    url = server.ws_url
    for part in (query, "" if since is None else f"since={quote(since, safe='')}"):
        if part:
            url += ("&" if "?" in url else "?") + part
    return ws_client(url, additional_headers=server.ws_headers)


async def publish(ws: ClientConnection, data: object, room: str = DEFAULT_ROOM) -> None:
    await ws.send(json.dumps({"type": "publish", "room": room, "data": data}))


async def messages_until(ws: ClientConnection, last: object) -> list[dict[str, Any]]:
    """Every `message` and `resync` frame up to the message whose data is `last`."""
    frames = []
    for _ in range(10_000):
        frame = await next_message(ws)
        if frame["type"] in ("message", "resync"):
            frames.append(frame)
            if frame.get("data") == last:
                return frames
    raise AssertionError(f"no message {last!r} in {frames}")


async def test_a_client_back_with_since_gets_what_it_missed_then_the_live_ones(
    start_server: StartServer,
) -> None:
    server = start_server()
    async with server.connect() as publisher:
        await next_message(publisher)  # welcome
        async with server.connect() as away:
            await next_message(away)
            for n in range(3):
                await publish(publisher, n)
            seen = await messages_until(away, 2)
        # Every message carries its event id on WebSocket, as on SSE.
        assert all(frame["id"] for frame in seen), seen
        for n in range(3, 6):  # published while it is away
            await publish(publisher, n)
        await messages_until(publisher, 5)
        async with resuming(server, seen[1]["id"]) as back:
            assert (await next_message(back))["type"] == "welcome"
            await publish(publisher, 6)
            frames = await messages_until(back, 6)
    assert [frame["data"] for frame in frames] == [2, 3, 4, 5, 6], frames
    ids = [frame["id"] for frame in frames]
    assert len(set(ids)) == len(ids)


async def test_a_position_older_than_the_history_or_unknown_gets_a_resync(
    start_server: StartServer,
) -> None:
    # Redis trims its streams in whole nodes (about 100 entries), so publish well past that.
    server = start_server(HISTORY_SIZE="3", **FAST_PUBLISHER)
    async with server.connect() as publisher:
        await next_message(publisher)
        await publish(publisher, 0)
        first = (await messages_until(publisher, 0))[0]["id"]
        for n in range(1, 250):
            await publish(publisher, n)
        await messages_until(publisher, 249)
        for since in (first, "1-1", "not an id"):
            async with resuming(server, since) as back:
                await next_message(back)
                resync = await next_message(back)
                assert resync["type"] == "resync", (since, resync)
                assert resync["rooms"] == [DEFAULT_ROOM]
                await publish(publisher, f"after {since}")
                frames = await messages_until(back, f"after {since}")
                assert [frame["data"] for frame in frames] == [f"after {since}"], frames


async def test_no_gap_and_no_duplicate_at_the_seam_while_messages_stream(
    start_server: StartServer,
) -> None:
    """A client that drops and comes back again and again, while a publisher streams numbered
    messages, ends with every one of them once, in order."""
    server = start_server(**FAST_PUBLISHER)
    total = 300
    received: list[int] = []
    last_id: str | None = None
    async with server.connect() as publisher:
        await next_message(publisher)

        async def stream() -> None:
            for n in range(total):
                await publish(publisher, n)
                if n % 10 == 0:
                    await asyncio.sleep(0.005)

        streaming: asyncio.Task[None] | None = None
        try:
            for _ in range(100):
                async with resuming(server, last_id) as ws:
                    await next_message(ws)
                    if streaming is None:  # a member from the first message on
                        streaming = asyncio.create_task(stream())
                    for _ in range(15):  # then drop it, mid-stream
                        frame = await next_message(ws)
                        if frame["type"] == "ping":
                            continue  # the heartbeat's
                        assert frame["type"] == "message", frame
                        received.append(frame["data"])
                        last_id = frame["id"]
                        if frame["data"] == total - 1:
                            break
                if received and received[-1] == total - 1:
                    break
        finally:
            if streaming is not None:
                await streaming
    assert received == list(range(total)), received


async def test_ids_are_never_given_twice_and_an_idle_room_is_forgotten() -> None:
    history = LocalHistory(size=10, ttl=0.05)
    old = history.append("r", '{"n":0}')
    history.append("s", '{"n":1}')
    assert await history.since("r", old) == []
    for _ in range(200):  # bounded: the timer frees the idle rooms' deques
        if not len(history):
            break
        await asyncio.sleep(0.01)
    assert len(history) == 0
    assert await history.since("r", old) is None, "forgotten: the client must resync"
    newer = history.append("r", '{"n":2}')
    assert newer != old
    assert await history.since("r", old) is None, "not a replay of the new room from the old id"
    assert await history.since("r", newer) == []
    await history.close()
{%- if cookiecutter.use_rooms %}


async def test_a_join_with_since_resumes_that_room(start_server: StartServer) -> None:
    server = start_server()
    async with resuming(server, None, "room=r") as publisher:
        await next_message(publisher)
        for n in range(4):
            await publish(publisher, n, "r")
        seen = await messages_until(publisher, 3)
        async with server.connect() as back:
            await next_message(back)
            await back.send(json.dumps({"type": "join", "room": "r", "since": seen[0]["id"]}))
            assert await next_message(back) == {"type": "joined", "room": "r"}
            await publish(publisher, 4, "r")
            frames = await messages_until(back, 4)
            assert [frame["data"] for frame in frames] == [1, 2, 3, 4], frames
            # A member already has the live messages: a second join replays nothing.
            await back.send(json.dumps({"type": "join", "room": "r", "since": seen[0]["id"]}))
            assert await next_message(back) == {"type": "joined", "room": "r"}
            await publish(publisher, 5, "r")
            assert [frame["data"] for frame in await messages_until(back, 5)] == [5]


def test_reading_the_history_follows_the_join_grant() -> None:
    async def authorize(identity: object, request: object) -> RoomGrants:
        return RoomGrants.of(rooms=["a*"], publish=["a*"])

    app = create_app(Settings(), authorize=authorize)
    with TestClient(app) as client, client.websocket_connect("/ws?room=a1") as ws:
        receive(ws)
        ws.send_json({"type": "publish", "room": "a1", "data": "secret"})
        event_id = receive(ws)["id"]
        ws.send_json({"type": "join", "room": "b", "since": event_id})
        assert receive(ws)["code"] == "forbidden"
        ws.send_json({"type": "join", "room": "a2", "since": event_id})
        assert receive(ws) == {"type": "joined", "room": "a2"}
        # An id of another room is no position in this one: nothing of a1 is replayed.
        assert receive(ws)["type"] == "resync"
        ws.send_json({"type": "publish", "room": "a2", "data": "mine"})
        assert receive(ws)["data"] == "mine"
{%- endif %}


async def test_a_client_gone_before_its_replay_harms_nobody(start_server: StartServer) -> None:
    server = start_server()
    async with server.connect() as publisher:
        await next_message(publisher)
        await publish(publisher, 0)
        event_id = (await messages_until(publisher, 0))[0]["id"]
        for _ in range(20):
            ws = await resuming(server, event_id)
            await ws.close()
        await publish(publisher, 1)
        assert [frame["data"] for frame in await messages_until(publisher, 1)] == [1]
        async with resuming(server, event_id) as back:
            await next_message(back)
            assert [frame["data"] for frame in await messages_until(back, 1)] == [1]
