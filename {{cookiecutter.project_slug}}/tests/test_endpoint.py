"""The WebSocket endpoint in-process: lifecycle, protocol errors and abuse."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette import status
from starlette.requests import HTTPConnection
from starlette.testclient import WebSocketDenialResponse, WebSocketTestSession
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from {{ cookiecutter.package_name }}.about import NAME
from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.endpoint import Endpoint, HandshakeRefused, Identity
from {{ cookiecutter.package_name }}.hub import Connection, Hub, HubSettings
from {{ cookiecutter.package_name }}.identity import SESSION_EXPIRED, close_on_expiry
from {{ cookiecutter.package_name }}.protocol import DEFAULT_ROOM, Message, Protocol, encode
from {{ cookiecutter.package_name }}.settings import Settings

from .messages import receive
from .transports import Recorder


def welcomed(ws: WebSocketTestSession) -> dict[str, Any]:
    frame = receive(ws)
    assert frame["type"] == "welcome", frame
    return frame


def hub_of(client: TestClient) -> Hub:
    hub: Hub = client.app.state.hub  # type: ignore[attr-defined]
    return hub


def test_welcome_names_the_connection_and_its_rooms(client: TestClient) -> None:
    with client.websocket_connect("/ws") as ws:
        frame = welcomed(ws)
        assert frame["connection"].startswith("c")
        assert frame["user"] == "anonymous"
        assert frame["rooms"] == ["lobby"]


def test_websockets_go_straight_to_the_endpoint_past_the_http_middleware() -> None:
    seen: list[str] = []

    class RecordScopes:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            seen.append(scope["type"])
            await self.app(scope, receive, send)

    app = create_app(Settings())
    app.add_middleware(RecordScopes)
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        with client.websocket_connect("/ws") as ws:
            welcomed(ws)
    assert "http" in seen
    assert "websocket" not in seen, "/ws skips the middleware (README: Run)"


def test_a_publish_reaches_every_client_and_the_sender(client: TestClient) -> None:
    with client.websocket_connect("/ws") as alice, client.websocket_connect("/ws") as bob:
        welcomed(alice)
        welcomed(bob)
        alice.send_json({"type": "publish", "data": {"text": "hi"}})
        expected = {
            "type": "message",
            "room": "lobby",
            "sender": "anonymous",
            "data": {"text": "hi"},
        }
        to_bob, to_alice = receive(bob), receive(alice)
        assert to_bob == to_alice
        to_bob.pop("id", None)  # with Server-Sent Events every message carries its event id
        assert to_bob == expected


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{oops", "invalid_json"),
        ('"just a string"', "invalid_message"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "publish", "data": 1, "colour": "red"}', "invalid_fields"),
        ('{"type": "publish", "room": "elsewhere", "data": 1}', "not_a_member"),
    ],
)
def test_a_bad_frame_gets_an_error_and_the_connection_lives_on(
    client: TestClient, frame: str, code: str
) -> None:
    with client.websocket_connect("/ws") as ws:
        welcomed(ws)
        ws.send_text(frame)
        error = receive(ws)
        assert error["type"] == "error"
        assert error["code"] == code
        assert error["detail"]
        ws.send_json({"type": "publish", "data": "still here"})
        assert receive(ws)["data"] == "still here"


def test_a_binary_frame_gets_an_error_and_the_connection_lives_on(client: TestClient) -> None:
    with client.websocket_connect("/ws") as ws:
        welcomed(ws)
        ws.send_bytes(b'{"type": "publish", "data": 1}')
        assert receive(ws)["code"] == "binary_not_supported"
        ws.send_json({"type": "publish", "data": 2})
        assert receive(ws)["data"] == 2


def limited_client(**hub: Any) -> TestClient:
    return TestClient(create_app(Settings(hub=HubSettings(**hub))))


@pytest.mark.parametrize(("batch_bytes", "frames"), [(64 * 1024, 1), (0, 3)])
def test_messages_queued_together_share_one_frame_unless_batching_is_off(
    batch_bytes: int, frames: int
) -> None:
    with (
        limited_client(batch_bytes=batch_bytes) as client,
        client.websocket_connect("/ws") as ws,
    ):
        welcomed(ws)
        hub, portal = hub_of(client), client.portal
        assert portal is not None
        # Delivered in one call on the server's loop: all three are queued before the writer runs.
        portal.call(
            lambda: [hub.deliver(DEFAULT_ROOM, encode({"type": "note", "n": n})) for n in range(3)]
        )
        texts = [ws.receive_text() for _ in range(frames)]
    assert [json.loads(line)["n"] for text in texts for line in text.split("\n")] == [0, 1, 2]


def test_an_oversized_frame_closes_with_1009() -> None:
    with limited_client(max_message_bytes=1024) as client, client.websocket_connect("/ws") as ws:
        welcomed(ws)
        ws.send_json({"type": "publish", "data": "é" * 600})  # 1,200 bytes, 600 characters
        with pytest.raises(WebSocketDisconnect) as closed:
            receive(ws)
        assert closed.value.code == status.WS_1009_MESSAGE_TOO_BIG
        assert len(hub_of(client)) == 0


def read_until_closed(ws: WebSocketTestSession) -> tuple[list[Any], int]:
    """The data of every message frame until the server closes, and the close code."""
    received: list[Any] = []
    while True:
        try:
            frame = receive(ws)
        except WebSocketDisconnect as closed:
            return received, closed.code
        received.append(frame["data"])


def test_a_flood_closes_with_1008() -> None:
    with (
        limited_client(rate_per_second=1, rate_burst=5) as client,
        client.websocket_connect("/ws") as watcher,
    ):
        welcomed(watcher)
        with client.websocket_connect("/ws") as flooder:
            welcomed(flooder)
            for n in range(6):
                flooder.send_json({"type": "publish", "data": n})
            received, code = read_until_closed(flooder)
        assert code == status.WS_1008_POLICY_VIOLATION
        # Its own copies may still be on their way (through a broker) when it is closed.
        assert received == [0, 1, 2, 3, 4][: len(received)]
        watcher.send_json({"type": "publish", "data": "end"})
        seen = [receive(watcher)["data"] for _ in range(6)]
        assert seen == [0, 1, 2, 3, 4, "end"], "the burst is served, the frame past it is not"


class Boom(Message):
    type: str


async def explode(connection: Connection, message: Boom) -> None:
    raise RuntimeError("a bug in a handler")


@pytest.fixture
def exploding_client() -> Iterator[TestClient]:
    app = create_app(Settings())
    protocol: Protocol = app.state.protocol
    protocol.on("boom", Boom, explode)
    with TestClient(app) as client:
        yield client


def test_a_server_error_closes_with_1011_and_cleans_up(exploding_client: TestClient) -> None:
    with exploding_client.websocket_connect("/ws") as ws:
        welcomed(ws)
        ws.send_json({"type": "boom"})
        with pytest.raises(WebSocketDisconnect) as closed:
            receive(ws)
        assert closed.value.code == status.WS_1011_INTERNAL_ERROR
    hub = hub_of(exploding_client)
    assert len(hub) == 0
    assert hub.rooms == {}


def broken_on_open(connection: Connection, websocket: WebSocket) -> None:
    raise KeyError("a bug in a feature's on_open")


def test_a_bug_in_a_hook_closes_with_1011_and_is_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not a disconnect: the client is told (1011), and the operator sees the bug at ERROR."""
    app = create_app(Settings())
    hub: Hub = app.state.hub
    app.router.routes.clear()
    app.add_api_websocket_route(
        "/ws", Endpoint(hub, Protocol(), HubSettings(), on_open=broken_on_open)
    )
    with TestClient(app) as client, client.websocket_connect("/ws") as ws:
        with pytest.raises(WebSocketDisconnect) as closed:
            receive(ws)
        assert closed.value.code == status.WS_1011_INTERNAL_ERROR
    failures = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert failures, "the bug is logged at ERROR"
    assert failures[0].exc_info is not None
    assert "a bug in a feature's on_open" in str(failures[0].exc_info[1])
    assert len(hub) == 0


def test_a_client_that_leaves_is_removed_with_its_rooms(client: TestClient) -> None:
    hub = hub_of(client)
    with client.websocket_connect("/ws") as ws:
        welcomed(ws)
        assert len(hub) == 1
        assert hub.rooms == {"lobby": 1}
    with client.websocket_connect("/ws") as ws:
        welcomed(ws)  # the first connection's handler has finished by the time this one is in
        assert len(hub) == 1
    assert hub.rooms == {}


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True


def test_readiness_fails_when_a_check_fails(client: TestClient) -> None:
    client.app.state.readiness.add_check("redis", lambda: False)  # type: ignore[attr-defined]
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis"] is False


def test_the_demo_page_and_its_client_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert "/static/client.js" in page.text
    script = client.get("/static/client.js")
    assert script.status_code == 200
    assert "class RealtimeClient" in script.text


def test_the_demo_page_learns_the_name_and_the_features_from_demo_json(
    client: TestClient,
) -> None:
    about = client.get("/demo.json").json()
    features = client.app.state.features  # type: ignore[attr-defined]
    assert about == {"name": NAME, "features": [feature.name for feature in features]}
    # The page shows a feature's controls by its name, so no two features share one.
    assert len(set(about["features"])) == len(features)
    assert "presence" in about["features"]


async def refuse(connection: HTTPConnection) -> Identity:
    raise HandshakeRefused(403, "origin not allowed")


def test_a_refused_handshake_is_an_http_response_and_nothing_is_accepted() -> None:
    app = create_app(Settings())
    hub: Hub = app.state.hub
    app.router.routes.clear()
    app.add_api_websocket_route("/ws", Endpoint(hub, Protocol(), HubSettings(), identify=refuse))
    with TestClient(app) as client:
        with pytest.raises(WebSocketDenialResponse) as refused:
            client.websocket_connect("/ws").__enter__()
        assert refused.value.status_code == 403
        assert refused.value.text == "origin not allowed"
    assert len(hub) == 0


async def expiring_soon(connection: HTTPConnection) -> Identity:
    return Identity("temporary", expires_at=time.time() + 0.5)


@pytest.mark.anyio
async def test_expiries_close_each_connection_at_its_own_time_on_one_timer() -> None:
    hub, now = Hub(), time.time()
    first, second = (Connection(Recorder(), hub.scheduler, user=u, outbox_limit=8) for u in "ab")
    close_on_expiry(first, Identity("a", expires_at=now + 0.3))
    close_on_expiry(second, Identity("b", expires_at=now + 0.05))  # earlier: the timer moves
    gone = Connection(Recorder(), hub.scheduler, user="c", outbox_limit=8)
    expiry = close_on_expiry(gone, Identity("c", expires_at=now + 3600))
    assert expiry is not None
    references = sys.getrefcount(gone)
    expiry.cancel()  # closed long before its credentials expire: not held until then
    assert sys.getrefcount(gone) == references - 1
    await asyncio.sleep(0.15)
    assert (first.close_code, second.close_code) == (None, SESSION_EXPIRED)
    await asyncio.sleep(0.3)
    assert first.close_code == SESSION_EXPIRED


def test_a_connection_is_closed_with_4001_when_its_identity_expires() -> None:
    app = create_app(Settings())
    hub: Hub = app.state.hub
    app.router.routes.clear()
    endpoint = Endpoint(hub, Protocol(), HubSettings(), identify=expiring_soon)
    app.add_api_websocket_route("/ws", endpoint)
    with TestClient(app) as client, client.websocket_connect("/ws") as ws:
        assert welcomed(ws)["user"] == "temporary"
        with pytest.raises(WebSocketDisconnect) as closed:
            receive(ws)
        assert closed.value.code == SESSION_EXPIRED
        assert closed.value.reason == "session expired"
    assert len(hub) == 0
