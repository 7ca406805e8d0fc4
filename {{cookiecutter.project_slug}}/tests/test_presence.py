"""Presence: per-user counts after joins, leaves and disconnects; coalesced events; the cap;
members only over WebSocket; `GET /presence` with the handshake's credentials and grants."""

from __future__ import annotations

import asyncio
import json
{%- if cookiecutter.auth == "cookie" %}
import time
{%- endif %}
from typing import Any

{% if cookiecutter.auth != "none" -%}
import httpx2
{% endif -%}
import pytest
from fastapi.testclient import TestClient
from starlette.requests import HTTPConnection

from {{ cookiecutter.package_name }}.app import create_app
{%- if cookiecutter.auth == "query_token" %}
from {{ cookiecutter.package_name }}.auth_token import TokenSettings, issue_token
{%- elif cookiecutter.auth == "cookie" %}
from {{ cookiecutter.package_name }}.auth_cookie import SessionSigner
{%- endif %}
from {{ cookiecutter.package_name }}.broker import LocalBroker
from {{ cookiecutter.package_name }}.hub import Connection, Hub
from {{ cookiecutter.package_name }}.identity import Identity
from {{ cookiecutter.package_name }}.permissions import Grants, RoomGrants
from {{ cookiecutter.package_name }}.presence import Presence, PresenceSettings
from {{ cookiecutter.package_name }}.protocol import DEFAULT_ROOM
from {{ cookiecutter.package_name }}.settings import Settings

from . import transports
from .conftest import {% if cookiecutter.auth != "none" %}TEST_SECRET, {% endif %}StartServer{% if cookiecutter.auth != "none" %}, connect_as{% endif %}
from .messages import next_message, receive


class Recorder(transports.Recorder):
    """Stands in for a socket: records every frame sent."""

    def events(self) -> list[dict[str, Any]]:
        return [
            message
            for message in map(json.loads, self.frames)
            if message["type"].startswith("presence_")
        ]


def connect(hub: Hub, user: str) -> tuple[Connection, Recorder]:
    recorder = Recorder()
    connection = Connection(recorder, hub.scheduler, user=user, outbox_limit=64)
    hub.add(connection)
    connection.start_writer()
    return connection, recorder


def presence_of(
    *, events: bool = False, max_users: int = 100, anonymous_users: bool = False
) -> tuple[Hub, Presence]:
    hub = Hub()
    settings = PresenceSettings(events=events, max_users=max_users)
    presence = Presence(hub, settings, LocalBroker(hub), anonymous_users=anonymous_users)
    return hub, presence


{%- if cookiecutter.auth == "none" %}


def connection_ids(users: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Anonymous users are named by their connection ids (with Redis followed by `@` and the
    process's tag, since several processes each number their connections)."""
    return [entry | {"user": entry["user"].partition("@")[0]} for entry in users]
{%- endif %}


async def settle() -> None:
    """Let the writers send what was offered."""
    for _ in range(3):
        await asyncio.sleep(0)


@pytest.mark.anyio
async def test_counts_follow_joins_leaves_and_disconnects() -> None:
    hub, presence = presence_of()
    alice_1, _ = connect(hub, "alice")
    alice_2, _ = connect(hub, "alice")
    bob, _ = connect(hub, "bob")
    for connection in (alice_1, alice_2, bob):
        hub.join(connection, "r")
    hub.join(alice_1, "r")  # joining twice is one membership
    assert presence.local("r") == {"alice": 2, "bob": 1}
    hub.leave(bob, "r")
    assert presence.local("r") == {"alice": 2}
    hub.remove(alice_1)  # a disconnect ends every membership
    assert presence.local("r") == {"alice": 1}
    hub.remove(alice_2)
    assert presence.local("r") == {}
    assert presence.local_rooms == [], "an empty room leaves no dict behind"


@pytest.mark.anyio
async def test_events_are_coalesced_per_user() -> None:
    hub, _ = presence_of(events=True)
    watcher, seen = connect(hub, "watcher")
    hub.join(watcher, "r")
    first_tab, _ = connect(hub, "alice")
    second_tab, _ = connect(hub, "alice")
    hub.join(first_tab, "r")
    hub.join(second_tab, "r")  # a second tab joins nobody
    hub.remove(first_tab)  # closing one of two tabs leaves nobody
    await settle()
    assert seen.events() == [
        {"type": "presence_join", "room": "r", "user": "watcher"},
        {"type": "presence_join", "room": "r", "user": "alice"},
    ]
    hub.remove(second_tab)
    await settle()
    assert seen.events()[2:] == [{"type": "presence_leave", "room": "r", "user": "alice"}]


@pytest.mark.anyio
async def test_no_events_unless_asked_for() -> None:
    hub, _ = presence_of()
    watcher, seen = connect(hub, "watcher")
    hub.join(watcher, "r")
    alice, _ = connect(hub, "alice")
    hub.join(alice, "r")
    hub.remove(alice)
    await settle()
    assert seen.events() == []


@pytest.mark.anyio
async def test_the_answer_is_capped_and_says_so() -> None:
    hub, presence = presence_of(max_users=2)
    for user, tabs in (("a", 1), ("b", 3), ("c", 2)):
        for _ in range(tabs):
            connection, _ = connect(hub, user)
            hub.join(connection, "r")
    answer = presence.answer("r", await presence.counts("r"))
    assert answer == {
        "type": "presence",
        "room": "r",
        "users": [{"user": "b", "connections": 3}, {"user": "c", "connections": 2}],
        "total": 3,
        "truncated": True,
    }


@pytest.mark.anyio
async def test_without_auth_every_connection_is_its_own_user() -> None:
    hub, presence = presence_of(anonymous_users=True)
    one, _ = connect(hub, "anonymous")
    two, _ = connect(hub, "anonymous")
    hub.join(one, "r")
    hub.join(two, "r")
    assert presence.local("r") == {one.id: 1, two.id: 1}


def test_a_member_asks_who_is_there_and_a_stranger_is_refused(client: TestClient) -> None:
    with (
        client.websocket_connect("/ws") as member,
        client.websocket_connect("/ws") as other,
    ):
        welcomes = [receive(member), receive(other)]
        member.send_json({"type": "presence", "room": DEFAULT_ROOM})
        answer = receive(member)
{%- if cookiecutter.auth == "none" %}
        expected = [{"user": welcome["connection"], "connections": 1} for welcome in welcomes]
        expected.sort(key=lambda entry: entry["user"])
        answer["users"] = connection_ids(answer["users"])
{%- else %}
        # In-process clients are all `anonymous` (conftest): one user, two connections.
        assert {welcome["user"] for welcome in welcomes} == {"anonymous"}
        expected = [{"user": "anonymous", "connections": 2}]
{%- endif %}
        assert answer == {
            "type": "presence",
            "room": DEFAULT_ROOM,
            "users": expected,
            "total": len(expected),
            "truncated": False,
        }
        member.send_json({"type": "presence", "room": "elsewhere"})
        error = receive(member)
        assert (error["type"], error["code"]) == ("error", "not_a_member")
        member.send_json({"type": "presence", "room": DEFAULT_ROOM})
        assert receive(member)["type"] == "presence", "the connection lives on"


def test_get_presence_answers_403_where_the_grants_close_the_room() -> None:
    """In-process clients are `anonymous` (conftest.py); this hook lets them into another room
    only, as a token's `rooms` claim would."""

    async def elsewhere_only(identity: Identity, request: HTTPConnection) -> Grants | None:
        return RoomGrants.of(rooms=["elsewhere"])

    with TestClient(create_app(Settings(), authorize=elsewhere_only)) as client:
        response = client.get("/presence", params={"room": DEFAULT_ROOM})
        assert response.status_code == 403
        assert response.json()["detail"] == f"forbidden: you may not join room {DEFAULT_ROOM!r}"
        # An invalid name is still the client's mistake first, as for `join`.
        assert client.get("/presence", params={"room": "x" * 1000}).status_code == 422


def test_an_invalid_room_over_http_is_a_422(client: TestClient) -> None:
    response = client.get("/presence", params={"room": "x" * 1000})
    assert response.status_code == 422
    assert "invalid_room" in response.json()["detail"]


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_get_presence_takes_the_credentials_of_ws(start_server: StartServer) -> None:
    server = start_server()
    async with server.http_client() as http:
        # A backend need not be connected: the grants decide, and these open every room.
        empty = await http.get("/presence", params={"room": DEFAULT_ROOM})
        assert empty.status_code == 200, empty.text
        assert (empty.json()["users"], empty.json()["total"]) == ([], 0)
    async with server.connect() as ws, server.http_client() as http:
        welcome = await next_message(ws)
        response = await http.get("/presence", params={"room": DEFAULT_ROOM})
        assert response.status_code == 200, response.text
{%- if cookiecutter.auth == "none" %}
        # Every connection is its own user.
        users = connection_ids(response.json()["users"])
        assert users == [{"user": welcome["connection"], "connections": 1}]
{%- else %}
        users = response.json()["users"]
        assert users == [{"user": welcome["user"], "connections": 1}]
{%- endif %}
{%- if cookiecutter.auth != "none" %}
    # Without the credentials: refused as /ws would be.
    async with httpx2.AsyncClient(base_url=server.http_url) as bare:
        assert (await bare.get("/presence")).status_code == 401
    # Credentials whose grants close the room: 403, with the code a `join` would get.
{%- if cookiecutter.auth == "query_token" %}
    token = issue_token("tester", 3600, TokenSettings(secret=TEST_SECRET), rooms=["elsewhere"])
    server.http_params = {"token": token}
{%- else %}
    session = SessionSigner(TEST_SECRET).sign("tester", time.time() + 3600, rooms=["elsewhere"])
    server.http_headers = {"Origin": server.http_url, "Cookie": f"session={session}"}
{%- endif %}
    async with server.http_client() as http:
        refused = await http.get("/presence", params={"room": DEFAULT_ROOM})
        assert refused.status_code == 403, refused.text
        assert refused.json()["detail"] == f"forbidden: you may not join room {DEFAULT_ROOM!r}"
{%- endif %}
{%- if cookiecutter.auth != "none" %}


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_a_second_tab_joins_nobody_on_a_real_server(start_server: StartServer) -> None:
    server = start_server(PRESENCE_EVENTS="true")
    async with connect_as(server, "watcher") as watcher:
        # The frames its opening set off (its own presence_join, when the broker delivers at
        # once) come before the welcome, as the errors of rooms named at connect do.
        while (await next_message(watcher))["type"] != "welcome":
            pass
        async with server.connect() as first_tab:
            await next_message(first_tab)
            async with server.connect() as second_tab:
                await next_message(second_tab)
            # The second tab is gone, the first is there: tester is still in the room.
            async with server.http_client() as http:
                answer = (await http.get("/presence", params={"room": DEFAULT_ROOM})).json()
            assert {"user": "tester", "connections": 1} in answer["users"], answer
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1]["type"] != "presence_leave":
            message = await next_message(watcher)
            message.pop("id", None)  # an event id, with a history
            if message["type"].startswith("presence_") and message["user"] == "tester":
                seen.append(message)
    # One join for two tabs, and one leave once the last of them closed.
    assert seen == [
        {"type": "presence_join", "room": DEFAULT_ROOM, "user": "tester"},
        {"type": "presence_leave", "room": DEFAULT_ROOM, "user": "tester"},
    ]
{%- endif %}
{%- if cookiecutter.use_sse %}


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_sse_subscribers_count_as_present(start_server: StartServer) -> None:
    server = start_server()
    async with (
        server.http_client(timeout=10) as http,
        http.stream("GET", "/sse", params={"room": DEFAULT_ROOM}) as stream,
    ):
        assert stream.status_code == 200
        for _ in range(100):
            answer = (await http.get("/presence", params={"room": DEFAULT_ROOM})).json()
            if answer["total"] == 1:
                break
            await asyncio.sleep(0.05)
        assert answer["total"] == 1, answer
{%- endif %}


def test_create_app_wires_presence() -> None:
    app = create_app(Settings())
    assert [type(feature) for feature in app.state.features].count(Presence) == 1
