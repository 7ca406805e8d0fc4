"""Per-room permissions: grants from patterns, refusals with `forbidden` that leave the
connection open, 403 over HTTP, the default room, the credentials' claims honoured by a real
server, and a hook of the user's own replacing the rule."""

from __future__ import annotations
{% if cookiecutter.auth == "cookie" %}
import time
{%- endif %}
from collections.abc import Iterator
from pathlib import Path
{%- if cookiecutter.auth != "none" %}
from typing import Any
{%- endif %}

import pytest
from fastapi.testclient import TestClient
from starlette.requests import HTTPConnection
from starlette.testclient import WebSocketDenialResponse
{%- if cookiecutter.auth != "none" %}
from websockets.asyncio.client import connect
{%- endif %}
{% if cookiecutter.auth == "query_token" %}
from {{ cookiecutter.package_name }}.__main__ import main
{%- endif %}
from {{ cookiecutter.package_name }}.app import create_app
{%- if cookiecutter.auth == "query_token" %}
from {{ cookiecutter.package_name }}.auth_token import TokenSettings, issue_token, verify_token
{%- elif cookiecutter.auth == "cookie" %}
from {{ cookiecutter.package_name }}.auth_cookie import CookieSettings, InvalidSession, SessionSigner
{%- endif %}
from {{ cookiecutter.package_name }}.identity import HandshakeRefused, Identity
from {{ cookiecutter.package_name }}.permissions import (
    MAX_PATTERNS,
    Authorize,
    Grants,
    RoomGrants,
    grants_from_claims,
)
from {{ cookiecutter.package_name }}.protocol import DEFAULT_ROOM
from {{ cookiecutter.package_name }}.settings import Settings

{%- if cookiecutter.auth != "none" %}

from .conftest import TEST_SECRET, Server, StartServer
from .messages import next_message, receive
{%- else %}

from .messages import receive
{%- endif %}


def test_names_and_patterns_match_as_fnmatch_does_case_sensitively() -> None:
    grants = RoomGrants.of(rooms=["lobby", "a*", "team-?", "x[12]"], publish=["a1"])
    for room in ("lobby", "a", "a1", "abc", "team-1", "x1", "x2"):
        assert grants.may_join(room), room
    for room in ("b", "lobby2", "A1", "team-12", "x3", "ba"):
        assert not grants.may_join(room), room
    assert grants.may_publish("a1")
    assert not grants.may_publish("a2")
    assert not grants.may_publish("lobby")


def test_publish_defaults_to_the_rooms_it_may_join_and_absent_claims_open_everything() -> None:
    assert grants_from_claims({"sub": "alice"}) is None, "old credentials keep every room"
    only_a = grants_from_claims({"rooms": ["a*"]})
    assert only_a is not None
    assert only_a.may_publish("a9")
    assert not only_a.may_publish("b")
    read_only = grants_from_claims({"publish": []})
    assert read_only is not None
    assert read_only.may_join("anything")
    assert not read_only.may_publish("anything")
    nothing = grants_from_claims({"rooms": []})
    assert nothing is not None
    assert not nothing.may_join(DEFAULT_ROOM)


@pytest.mark.parametrize(
    "claims",
    [
        {"rooms": "a*"},
        {"rooms": [1]},
        {"rooms": [""]},
        {"publish": ["x" * 129]},
        {"rooms": ["r"] * (MAX_PATTERNS + 1)},
    ],
)
def test_claims_that_are_not_lists_of_patterns_are_refused(claims: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must"):
        grants_from_claims(claims)


def test_the_same_grants_are_one_shared_object_per_identity_not_per_connection() -> None:
    # Memory per connection: 10,000 connections of one grant hold one object between them.
    first = grants_from_claims({"rooms": ["a*", "b"], "publish": ["a1"]})
    assert first is grants_from_claims({"rooms": ["a*", "b"], "publish": ["a1"]})
    assert first is not grants_from_claims({"rooms": ["a*", "b"]})


def by_user(grants: dict[str, Grants | None]) -> Authorize:
    """A hook of the user's own, as a database lookup would be: the grants by user name."""

    async def authorize(identity: Identity, request: HTTPConnection) -> Grants | None:
        return grants.get(identity.user, RoomGrants.of(rooms=[]))

    return authorize


@pytest.fixture
def hooked() -> Iterator[TestClient]:
    """In-process clients are `anonymous` (conftest.py): the hook gives them a* to read and a1
    to publish to, and keeps the default room closed."""
    hook = by_user({"anonymous": RoomGrants.of(rooms=["a*"], publish=["a1"])})
    with TestClient(create_app(Settings(), authorize=hook)) as client:
        yield client
{%- if cookiecutter.use_rooms %}


def test_a_hook_replaces_the_rule_join_and_publish_refused_with_forbidden(
    hooked: TestClient,
) -> None:
    with hooked.websocket_connect("/ws?room=a1&room=b&room=a2") as ws:
        assert receive(ws) == {
            "type": "error",
            "code": "forbidden",
            "detail": "you may not join room 'b'",
        }
        assert receive(ws)["rooms"] == ["a1", "a2"]
        ws.send_json({"type": "join", "room": "b"})
        assert receive(ws)["code"] == "forbidden"
        ws.send_json({"type": "publish", "room": "a2", "data": "no"})
        assert receive(ws)["code"] == "forbidden", "a room it may read, not publish to"
        ws.send_json({"type": "publish", "room": "b", "data": "no"})
        assert receive(ws)["code"] == "forbidden", "not not_a_member: joining would not help"
        # Still connected, and allowed what the grants allow.
        ws.send_json({"type": "join", "room": "a3"})
        assert receive(ws) == {"type": "joined", "room": "a3"}
        ws.send_json({"type": "publish", "room": "a1", "data": "yes"})
        assert receive(ws)["data"] == "yes"


def test_a_client_whose_grants_exclude_the_default_room_starts_in_no_room(
    hooked: TestClient,
) -> None:
    with hooked.websocket_connect("/ws") as ws:
        welcome = receive(ws)
        assert welcome["type"] == "welcome", "no error frame for a room it did not ask for"
        assert welcome["rooms"] == []
        ws.send_json({"type": "join", "room": "a1"})
        assert receive(ws) == {"type": "joined", "room": "a1"}
{%- else %}


def test_a_hook_replaces_the_rule_the_default_room_closed_and_publish_forbidden(
    hooked: TestClient,
) -> None:
    with hooked.websocket_connect("/ws") as ws:
        welcome = receive(ws)
        assert welcome["type"] == "welcome", "no error frame for a room it did not ask for"
        assert welcome["rooms"] == [], "its grants exclude the one room"
        ws.send_json({"type": "publish", "data": "no"})
        assert receive(ws)["code"] == "forbidden"
        ws.send_json({"type": "publish", "data": "again"})
        assert receive(ws)["code"] == "forbidden", "the connection lives on"


def test_a_read_only_grant_is_in_the_room_and_may_not_publish() -> None:
    hook = by_user({"anonymous": RoomGrants.of(rooms=[DEFAULT_ROOM], publish=[])})
    with (
        TestClient(create_app(Settings(), authorize=hook)) as client,
        client.websocket_connect("/ws") as ws,
    ):
        assert receive(ws)["rooms"] == [DEFAULT_ROOM]
        ws.send_json({"type": "publish", "data": "no"})
        assert receive(ws)["code"] == "forbidden"
{%- endif %}
{%- if cookiecutter.use_sse %}


def test_sse_and_publish_answer_403_where_the_hook_forbids(hooked: TestClient) -> None:
{%- if cookiecutter.use_rooms %}
    response = hooked.get("/sse", params={"room": ["a1", "b"]})
    assert response.status_code == 403
    assert response.json()["detail"] == "forbidden: you may not join room 'b'"
    assert hooked.post("/publish", json={"room": "a2", "data": 1}).status_code == 403
    assert hooked.post("/publish", json={"room": "a1", "data": 1}).status_code == 200
{%- else %}
    assert hooked.get("/sse").status_code == 403
    assert hooked.post("/publish", json={"data": 1}).status_code == 403
{%- endif %}
{%- endif %}


def test_a_hook_may_turn_a_client_away_at_the_handshake() -> None:
    async def banned(identity: Identity, request: HTTPConnection) -> Grants | None:
        raise HandshakeRefused(403, "banned")

    with TestClient(create_app(Settings(), authorize=banned)) as client:
        with pytest.raises(WebSocketDenialResponse) as denial:
            client.websocket_connect("/ws").__enter__()
        assert (denial.value.status_code, denial.value.text) == (403, "banned")
{%- if cookiecutter.use_sse %}
        assert client.post("/publish", json={"data": 1}).status_code == 403
{%- endif %}


def test_the_readme_documents_the_forbidden_code() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    assert "| `forbidden` |" in readme
    assert "## Room permissions" in readme


def test_without_a_hook_or_credentials_grants_every_room_is_open(client: TestClient) -> None:
    with client.websocket_connect("/ws") as ws:
        assert receive(ws)["rooms"] == [DEFAULT_ROOM]
        ws.send_json({"type": "publish", "data": "hi"})
        assert receive(ws)["data"] == "hi"
{%- if cookiecutter.auth != "none" %}


def grant(server: Server, user: str, **claims: Any) -> None:
    """Give the server's clients credentials for `user` carrying these grants."""
{%- if cookiecutter.auth == "query_token" %}
    token = issue_token(user, 3600, TokenSettings(secret=TEST_SECRET), **claims)
    server.ws_path = f"/ws?token={token}"
    server.http_params = {"token": token}
{%- else %}
    session = SessionSigner(TEST_SECRET).sign(user, time.time() + 3600, **claims)
    server.ws_headers = {"Origin": server.http_url, "Cookie": f"session={session}"}
    server.http_headers = server.ws_headers
{%- endif %}


def in_rooms(server: Server, *rooms: str) -> connect:
    separator = "&" if "?" in server.ws_url else "?"
    query = "&".join(f"room={room}" for room in rooms)
    return connect(server.ws_url + separator + query, additional_headers=server.ws_headers)


@pytest.mark.anyio
async def test_a_real_server_honours_the_credentials_grants(start_server: StartServer) -> None:
    server = start_server()
{%- if cookiecutter.use_rooms %}
    grant(server, "alice", rooms=["a*"], publish=["a1"])
    async with in_rooms(server, "a1", "a2") as ws:
        assert (await next_message(ws))["rooms"] == ["a1", "a2"]
        await ws.send('{"type":"join","room":"b"}')
        assert (await next_message(ws))["code"] == "forbidden"
        await ws.send('{"type":"publish","room":"a2","data":"no"}')
        assert (await next_message(ws))["code"] == "forbidden"
        await ws.send('{"type":"publish","room":"a1","data":"yes"}')
        message = await next_message(ws)
        assert (message["sender"], message["data"]) == ("alice", "yes"), "still connected"
{%- else %}
    grant(server, "alice", rooms=[DEFAULT_ROOM], publish=[])
    async with server.connect() as ws:
        assert (await next_message(ws))["rooms"] == [DEFAULT_ROOM]
        await ws.send('{"type":"publish","data":"no"}')
        assert (await next_message(ws))["code"] == "forbidden"
        await ws.send('{"type":"publish","data":"again"}')
        assert (await next_message(ws))["code"] == "forbidden", "still connected"
{%- endif %}
{%- if cookiecutter.use_sse %}
    async with server.http_client(timeout=10) as client:
{%- if cookiecutter.use_rooms %}
        assert (await client.get("/sse", params={"room": "b"})).status_code == 403
        response = await client.post("/publish", json={"room": "a2", "data": 1})
        assert response.status_code == 403
        response = await client.post("/publish", json={"room": "a1", "data": 1})
        assert response.status_code == 200
{%- else %}
        response = await client.post("/publish", json={"data": 1})
        assert response.status_code == 403
    grant(server, "bob", rooms=["elsewhere"])
    async with server.http_client(timeout=10) as client:
        assert (await client.get("/sse")).status_code == 403
{%- endif %}
{%- endif %}
    grant(server, "carol")
    async with server.connect() as ws:
        assert (await next_message(ws))["rooms"] == [DEFAULT_ROOM], "no grants: every room"
{%- endif %}
{%- if cookiecutter.auth == "query_token" %}


@pytest.mark.anyio
async def test_the_token_command_issues_grants_the_server_honours(
    start_server: StartServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUTH_SECRET", TEST_SECRET)
    assert main(["token", "dave", "--rooms", f"{DEFAULT_ROOM},a*", "--publish", "a1"]) == 0
    token = capsys.readouterr().out.strip()
    grants = verify_token(token, TokenSettings(secret=TEST_SECRET)).grants
    assert grants is not None
    assert grants.may_join("a7")
    assert not grants.may_publish("a7")
    server = start_server()
    server.ws_path = f"/ws?token={token}"
    async with server.connect() as ws:
        assert (await next_message(ws))["rooms"] == [DEFAULT_ROOM]
        await ws.send('{"type":"publish","data":"no"}')
        assert (await next_message(ws))["code"] == "forbidden"
    assert main(["token", "dave", "--rooms", ",".join(["r"] * (MAX_PATTERNS + 1))]) == 2
    assert "at most" in capsys.readouterr().err
{%- elif cookiecutter.auth == "cookie" %}


@pytest.mark.real_auth
def test_the_dev_login_sets_a_session_with_grants_the_handshake_honours() -> None:
    settings = CookieSettings(secret=TEST_SECRET, dev_endpoints=True)
    with TestClient(create_app(Settings(auth=settings))) as client:
        response = client.post("/auth/login", json={"user": "erin", "rooms": ["a*"]})
        assert response.status_code == 200
        origin = {"origin": "http://testserver"}
        with client.websocket_connect("/ws", headers=origin) as ws:
            welcome = receive(ws)
            assert (welcome["user"], welcome["rooms"]) == ("erin", [])
{%- if cookiecutter.use_rooms %}
            ws.send_json({"type": "join", "room": "b"})
            assert receive(ws)["code"] == "forbidden"
            ws.send_json({"type": "join", "room": "a1"})
            assert receive(ws) == {"type": "joined", "room": "a1"}
{%- endif %}
        bad = {"user": "erin", "rooms": ["x"] * (MAX_PATTERNS + 1)}
        assert client.post("/auth/login", json=bad).status_code == 422


def test_a_session_with_malformed_grants_is_refused() -> None:
    signer = SessionSigner(TEST_SECRET)
    value = signer.sign("mallory", time.time() + 60, rooms="a*")  # type: ignore[arg-type]
    with pytest.raises(InvalidSession):
        signer.verify(value)
{%- endif %}
