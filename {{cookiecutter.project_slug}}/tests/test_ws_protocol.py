"""The template's uvicorn protocol: its flow-control flag behaves as the Event it replaces, its
send without a coroutine sends exactly when uvicorn's own `send` would not wait or refuse, and it
is the connection's transport, reached through its scope extension."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.asyncio.client import ClientConnection, connect

from {{ cookiecutter.package_name }} import ws_protocol
from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.endpoint import SendTransport
from {{ cookiecutter.package_name }}.hub import QUIET_SECONDS, Connection, Hub
from {{ cookiecutter.package_name }}.protocol import DEFAULT_ROOM, encode
from {{ cookiecutter.package_name }}.settings import Settings
from {{ cookiecutter.package_name }}.ws_protocol import (
    WebSocketProtocol,
    WritableFlag,
    missing_internals,
    serving_protocol,
    transport_of,
)

from .conftest import StartServer, free_port
from .messages import next_message

pytestmark = pytest.mark.anyio


async def test_the_writable_flag_holds_senders_only_while_paused() -> None:
    flag = WritableFlag()
    assert flag.is_set()
    await asyncio.wait_for(flag.wait(), 1)  # writable: no wait at all
    flag.clear()  # the transport's buffer is full
    flag.clear()
    senders = [asyncio.create_task(flag.wait()) for _ in range(2)]
    await asyncio.sleep(0.05)
    assert not any(sender.done() for sender in senders), "held while paused"
    flag.set()  # drained
    await asyncio.wait_for(asyncio.gather(*senders), 1)
    assert flag.is_set()


async def receive_all(ws: ClientConnection) -> list[str]:
    return [str(message) async for message in ws]


@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "per-message-deflate"])
async def test_send_text_now_sends_only_when_send_would_go_through_at_once(deflate: bool) -> None:
    answers: dict[str, bool] = {}
    # Each length of the frame header (7-bit, 16-bit, 64-bit), and UTF-8.
    medium, large = "m" * 300, "l" * 70_000

    async def app(scope: Any, receive: Any, send: Any) -> None:
        protocol = transport_of(scope)
        assert protocol is not None, "the protocol offers itself in the scope"
        assert (await receive())["type"] == "websocket.connect"
        answers["before accept"] = protocol.send_text_now("too early")
        await send({"type": "websocket.accept"})
        answers["open"] = protocol.send_text_now("premier é")
        protocol.pause_writing()  # what the transport calls when the client's buffer is full
        answers["paused"] = protocol.send_text_now("held")
        protocol.resume_writing()
        answers["resumed"] = protocol.send_text_now(medium)
        answers["large"] = protocol.send_text_now(large)
        await send({"type": "websocket.close", "code": 1000})
        answers["after close"] = protocol.send_text_now("too late")

    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ws=WebSocketProtocol,
        ws_per_message_deflate=deflate,
        lifespan="off",
    )
    # The client offers compression.
    async with serving(config), connect(f"ws://127.0.0.1:{port}/") as ws:
        extensions = [type(extension).__name__ for extension in ws.protocol.extensions]
        assert extensions == (["PerMessageDeflate"] if deflate else [])
        # Iteration ends at the server's normal close.
        received = await asyncio.wait_for(receive_all(ws), 5)
    assert answers == {
        "before accept": False,
        "open": True,
        "paused": False,
        "resumed": True,
        "large": True,
        "after close": False,
    }
    assert received == ["premier é", medium, large]


@contextlib.asynccontextmanager
async def serving(config: uvicorn.Config) -> AsyncIterator[None]:
    """A uvicorn server in this event loop, for as long as the block runs."""
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(100):
            if server.started:
                break
            await asyncio.sleep(0.05)
        yield
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def server_side(hub: Hub) -> Connection:
    """The one connection of the hub, once the server has registered it."""
    for _ in range(200):
        if len(hub):
            [connection] = hub
            return connection
        await asyncio.sleep(0.01)
    raise AssertionError("the server never registered the connection")


@pytest.mark.parametrize("protocol", [WebSocketProtocol, "websockets-sansio"])
async def test_each_route_of_the_write_path_on_a_real_server(protocol: Any) -> None:
    # The template's protocol: written at once after a quiet spell, at the end of the step while
    # the hub is busy (one batch), never by the writer task. uvicorn's own: the ASGI send alone.
    app = create_app(Settings())
    hub: Hub = app.state.hub
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, ws=protocol, log_level="warning")
    async with serving(config):
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            assert (await next_message(ws))["type"] == "welcome"
            connection = await server_side(hub)
            transport = connection.transport
            fast = protocol is WebSocketProtocol
            assert isinstance(transport, WebSocketProtocol if fast else SendTransport)
            await asyncio.sleep(QUIET_SECONDS * 2)
            hub.deliver(DEFAULT_ROOM, encode({"n": 0}))
            assert connection.pending == (0 if fast else 1), "written during deliver"
            hub.deliver(DEFAULT_ROOM, encode({"n": 1}))
            hub.deliver(DEFAULT_ROOM, encode({"n": 2}))
            assert connection.pending == (2 if fast else 3), "the hub is busy: queued"
            if fast:
                await asyncio.sleep(0)  # the end of this step
                assert connection.pending == 0, "written at the end of the step"
            if fast:
                assert await asyncio.wait_for(ws.recv(), 5) == '{"n":0}'
                assert await asyncio.wait_for(ws.recv(), 5) == '{"n":1}\n{"n":2}', "one batch"
            else:  # the writer task's batch
                assert await asyncio.wait_for(ws.recv(), 5) == '{"n":0}\n{"n":1}\n{"n":2}'
        for _ in range(200):
            if not len(hub):
                break
            await asyncio.sleep(0.01)
        if fast:
            assert isinstance(transport, WebSocketProtocol)
            # Held only while the app runs: the scope refers to the protocol, a cycle otherwise.
            assert transport_of(transport.scope) is None


class WithoutDisconnected(WebSocketsSansIOProtocol):
    """uvicorn's protocol as a release that renamed `disconnected` would have it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self.disconnected


# Imported at the server's start-up through PYTHONPATH: the start-up check then probes a uvicorn
# protocol without `disconnected`, while uvicorn itself is left whole.
WITHOUT_DISCONNECTED = """
from {{ cookiecutter.package_name }} import ws_protocol
from tests.test_ws_protocol import WithoutDisconnected

ws_protocol.WebSocketsSansIOProtocol = WithoutDisconnected
"""

FALLBACK_WARNING = "lacks what the template's WebSocket protocol relies on"


def test_the_installed_uvicorn_has_all_the_protocol_relies_on() -> None:
    # Fails when a uvicorn release inside the bounds of pyproject.toml drops or renames a part:
    # the newest-versions CI then says so, before a user's service falls back.
    assert missing_internals() == []
    assert serving_protocol() is WebSocketProtocol


def test_a_uvicorn_without_a_part_gets_one_warning_and_its_own_protocol(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert missing_internals(WithoutDisconnected) == ["disconnected"]
    monkeypatch.setattr(ws_protocol, "WebSocketsSansIOProtocol", WithoutDisconnected)
    with caplog.at_level(logging.WARNING):
        assert serving_protocol() == "auto"
    warnings = [record for record in caplog.records if FALLBACK_WARNING in record.getMessage()]
    assert [record.levelno for record in warnings] == [logging.WARNING]
    assert "disconnected" in warnings[0].getMessage()


@pytest.fixture
def startup_without_disconnected(tmp_path: Path) -> str:
    """A PYTHONPATH whose sitecustomize.py runs WITHOUT_DISCONNECTED in the server process."""
    startup = tmp_path / "startup"
    startup.mkdir()
    (startup / "sitecustomize.py").write_text(WITHOUT_DISCONNECTED, encoding="utf-8")
    project = Path(__file__).resolve().parents[1]  # where `tests.test_ws_protocol` imports from
    return os.pathsep.join([str(startup), str(project)])


async def test_a_server_whose_check_fails_serves_and_broadcasts_on_uvicorns_protocol(
    start_server: StartServer, startup_without_disconnected: str
) -> None:
    server = start_server(PYTHONPATH=startup_without_disconnected)
    clients = [await server.connect() for _ in range(3)]
    try:
        for ws in clients:
            assert (await next_message(ws))["type"] == "welcome"
        for n in range(20):  # several batches, through uvicorn's own `send`
            await clients[0].send(json.dumps({"type": "publish", "data": n}))
        for ws in clients:
            received = [(await next_message(ws))["data"] for _ in range(20)]
            assert received == list(range(20)), "every client gets every message, in order"
    finally:
        for ws in clients:
            await ws.close()
    output = server.output()
    assert output.count(FALLBACK_WARNING) == 1, output
    assert "disconnected" in output
