"""Rooms: several per connection, delivery only to members, nothing left behind."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi.testclient import TestClient
from starlette.testclient import WebSocketTestSession

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.hub import Hub
from {{ cookiecutter.package_name }}.rooms import RoomSettings
from {{ cookiecutter.package_name }}.settings import Settings

from .messages import receive


def open_in(client: TestClient, *rooms: str) -> WebSocketTestSession:
    """Connect in `rooms` and read the welcome; `hang_up` ends it."""
    query = "&".join(f"room={room}" for room in rooms)
    ws = client.websocket_connect(f"/ws?{query}").__enter__()
    welcome = receive(ws)
    assert welcome["type"] == "welcome"
    assert welcome["rooms"] == sorted(rooms)
    return ws


def hang_up(*sockets: WebSocketTestSession, code: int = 1000) -> None:
    for ws in sockets:
        ws.close(code)
        ws.__exit__(None, None, None)


def publish(ws: WebSocketTestSession, room: str, data: Any) -> dict[str, Any]:
    """Publish and return the sender's own echo, which also proves the server handled it."""
    ws.send_json({"type": "publish", "room": room, "data": data})
    echo = receive(ws)
    # With Server-Sent Events every message also carries its event id.
    fields = {name: value for name, value in echo.items() if name != "id"}
    assert fields == {"type": "message", "room": room, "sender": "anonymous", "data": data}
    return echo


def hub_of(client: TestClient) -> Hub:
    hub: Hub = client.app.state.hub  # type: ignore[attr-defined]
    return hub


def test_a_message_in_one_room_never_reaches_a_member_of_only_another(
    client: TestClient,
) -> None:
    a_only = open_in(client, "a")
    b_only = open_in(client, "b")
    publish(a_only, "a", "for a")
    publish(b_only, "b", "for b")
    # Each got its own echo first and nothing else: the next frame is the marker below.
    publish(a_only, "a", "marker")
    publish(b_only, "b", "marker")
    hang_up(a_only, b_only)


def test_a_member_of_two_rooms_gets_both_once_each(client: TestClient) -> None:
    both = open_in(client, "a", "b")
    a_only = open_in(client, "a")
    b_only = open_in(client, "b")
    publish(a_only, "a", 1)
    publish(b_only, "b", 2)
    assert [receive(both)["data"], receive(both)["data"]] == [1, 2]
    publish(both, "a", "marker")
    assert receive(a_only)["data"] == "marker", "a_only got nothing from b in between"
    hang_up(both, a_only, b_only)


def test_join_and_leave_are_acknowledged_and_leaving_stops_delivery(client: TestClient) -> None:
    member = open_in(client, "lobby")
    speaker = open_in(client, "lobby")
    for ws in (member, speaker):
        ws.send_json({"type": "join", "room": "news"})
        assert receive(ws) == {"type": "joined", "room": "news"}
    publish(speaker, "news", "first")
    assert receive(member)["data"] == "first"
    member.send_json({"type": "leave", "room": "news"})
    assert receive(member) == {"type": "left", "room": "news"}
    publish(speaker, "news", "second")
    publish(speaker, "lobby", "marker")
    assert receive(member)["data"] == "marker", "nothing from news after leaving it"
    member.send_json({"type": "publish", "room": "news", "data": "x"})
    assert receive(member)["code"] == "not_a_member"
    member.send_json({"type": "leave", "room": "news"})
    assert receive(member)["code"] == "not_a_member"
    hang_up(member, speaker)


def test_an_abrupt_disconnect_leaves_no_membership(client: TestClient) -> None:
    hub = hub_of(client)
    ws = open_in(client, "a", "b", "c")
    assert hub.rooms == {"a": 1, "b": 1, "c": 1}
    hang_up(ws, code=1006)  # as if the network dropped
    hang_up(open_in(client, "probe"))  # by the time it is welcomed, the first is cleaned up
    assert "a" not in hub.rooms
    assert hub.rooms.keys() <= {"probe"}


def test_invalid_names_and_the_cap_get_error_frames_and_the_connection_lives_on() -> None:
    settings = Settings(rooms=RoomSettings(max_rooms_per_connection=2, max_name_length=8))
    with TestClient(create_app(settings)) as client:
        ws = open_in(client, "lobby")
        for bad in ("", "has space", "waytoolongname", "semi;colon"):
            ws.send_json({"type": "join", "room": bad})
            error = receive(ws)
            assert error["code"] == "invalid_room", bad
        ws.send_json({"type": "join", "room": "second"})
        assert receive(ws)["type"] == "joined"
        ws.send_json({"type": "join", "room": "third"})
        assert receive(ws)["code"] == "too_many_rooms"
        ws.send_json({"type": "join", "room": "second"})
        assert receive(ws)["type"] == "joined", "joining a room again is not past the cap"
        publish(ws, "second", "alive")
        hang_up(ws)


def test_bad_rooms_named_at_connect_get_errors_before_the_welcome(client: TestClient) -> None:
    with client.websocket_connect("/ws?room=ok&room=not%20ok") as ws:
        assert receive(ws)["code"] == "invalid_room"
        welcome = receive(ws)
        assert welcome["type"] == "welcome"
        assert welcome["rooms"] == ["ok"]


def test_a_thousand_cycles_leave_no_rooms_connections_or_tasks(client: TestClient) -> None:
    hub = hub_of(client)

    async def task_count() -> int:
        return len(asyncio.all_tasks())

    portal = client.portal
    assert portal is not None
    before = portal.call(task_count)
    for n in range(1000):
        ws = open_in(client, f"r{n % 7}")
        ws.send_json({"type": "join", "room": f"extra{n}"})
        assert receive(ws)["type"] == "joined"
        if n % 2:
            ws.send_json({"type": "leave", "room": f"extra{n}"})
            assert receive(ws)["type"] == "left"
        hang_up(ws, code=1000 if n % 3 else 1006)
    hang_up(open_in(client, "probe"))
    assert hub.rooms.keys() <= {"probe"}
    assert len(hub) <= 1
    # Work the cycles set off may still be finishing (with Redis, subscription changes and a
    # history read per room opened): a leaked task never ends, so a bounded wait still fails.
    for _ in range(100):
        if portal.call(task_count) <= before + 3:
            break
        time.sleep(0.05)
    assert portal.call(task_count) <= before + 3, "no reader or writer task outlived its socket"
