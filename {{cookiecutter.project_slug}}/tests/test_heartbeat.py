"""Heartbeats against a real server: answered pings keep a client, silence closes it with 4000."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2
import pytest
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from {{ cookiecutter.package_name }}.heartbeat import HEARTBEAT_TIMEOUT, Heartbeat, HeartbeatSettings
from {{ cookiecutter.package_name }}.hub import Connection, Hub

from .conftest import Server, StartServer
from .messages import next_message
from .transports import Recorder, Stream

INTERVAL = 0.2
TIMEOUT = 0.3
# Generous ceilings for a loaded CI machine; the assertions are about what happens, not speed.
PATIENCE = 10.0


@pytest.fixture
def server(start_server: StartServer) -> Server:
    return start_server(
        HEARTBEAT_INTERVAL_SECONDS=str(INTERVAL), HEARTBEAT_TIMEOUT_SECONDS=str(TIMEOUT)
    )


async def open_client(server: Server) -> ClientConnection:
    # No protocol-level pings from the client: only application frames may count as answers.
    ws = await server.connect(ping_interval=None)
    welcome = await next_message(ws, PATIENCE)
    assert welcome["type"] == "welcome"
    assert welcome["heartbeat"] == {"interval": INTERVAL, "timeout": TIMEOUT}
    return ws


def readiness(server: Server) -> dict[str, Any]:
    body: dict[str, Any] = httpx2.get(f"{server.http_url}/readyz", timeout=5).json()
    return body


@pytest.mark.anyio
async def test_a_client_that_answers_pings_stays_connected(server: Server) -> None:
    ws = await open_client(server)
    pings = 0
    while pings < 10:  # ten intervals: far past interval + timeout
        frame = await next_message(ws, PATIENCE)
        if frame["type"] == "ping":
            pings += 1
            await ws.send(json.dumps({"type": "pong"}))
    await ws.send(json.dumps({"type": "publish", "data": "still here"}))
    while (frame := await next_message(ws, PATIENCE))["type"] == "ping":
        await ws.send(json.dumps({"type": "pong"}))
    assert (frame["type"], frame["data"]) == ("message", "still here")
    assert readiness(server)["connections"] == 1
    await ws.close()


@pytest.mark.anyio
async def test_a_client_that_only_sends_protocol_pings_stays_connected(server: Server) -> None:
    # The `websockets` client's own keepalive, and no application frame at all: its pings prove
    # it is there as well as a pong would.
    ws = await server.connect(ping_interval=INTERVAL, ping_timeout=PATIENCE)
    assert (await next_message(ws, PATIENCE))["type"] == "welcome"
    pings = 0
    while pings < 10:  # ten intervals, never answered: far past interval + timeout
        if (await next_message(ws, PATIENCE))["type"] == "ping":
            pings += 1
    assert readiness(server)["connections"] == 1
    await ws.send(json.dumps({"type": "publish", "data": "still here"}))
    while (frame := await next_message(ws, PATIENCE))["type"] == "ping":
        pass
    assert (frame["type"], frame["data"]) == ("message", "still here")
    await ws.close()


@pytest.mark.anyio
async def test_a_silent_client_is_closed_with_4000_and_forgotten(server: Server) -> None:
    ws = await open_client(server)

    async def read_until_closed() -> list[str]:
        types = []
        try:
            while True:
                types.append((await next_message(ws, PATIENCE))["type"])
        except ConnectionClosed:
            return types

    # The bound: closed by interval + timeout after the last frame, plus at most one interval
    # for the next sweep; PATIENCE is far more than that.
    types = await asyncio.wait_for(read_until_closed(), timeout=PATIENCE)
    assert "ping" in types, "the server pinged before giving up"
    assert ws.close_code == HEARTBEAT_TIMEOUT == 4000
    assert ws.close_reason == "heartbeat timeout"
    for _ in range(50):
        body = readiness(server)
        if body["connections"] == 0:
            break
        await asyncio.sleep(0.1)
    assert body["connections"] == 0, "the connection was removed from the hub"
    assert body["rooms"] == 0, "and so were its rooms"


@pytest.mark.parametrize("field", ["interval_seconds", "timeout_seconds"])
@pytest.mark.parametrize("value", [0, -1])
def test_intervals_must_be_positive(field: str, value: float) -> None:
    with pytest.raises(ValidationError):
        HeartbeatSettings.model_validate({field: value})


def test_the_defaults() -> None:
    settings = HeartbeatSettings()
    assert (settings.interval_seconds, settings.timeout_seconds) == (20.0, 20.0)


@pytest.mark.anyio
async def test_one_tick_closes_the_silent_and_pings_the_rest() -> None:
    hub = Hub()
    silent, on_time, lively = (
        Connection(Recorder(), hub.scheduler, user="u", outbox_limit=4) for _ in range(3)
    )
    for connection in (silent, on_time, lively):
        hub.add(connection)
    heartbeat = Heartbeat(hub, HeartbeatSettings(interval_seconds=1, timeout_seconds=2))
    now = lively.last_seen + 10
    lively.last_seen = now - 0.5
    on_time.last_seen = now - 3  # exactly interval + timeout: still in time
    silent.last_seen = now - 3.01
    assert heartbeat.tick(now) == 1
    assert (silent.close_code, silent.close_reason) == (HEARTBEAT_TIMEOUT, "heartbeat timeout")
    assert on_time.close_code is None
    assert lively.close_code is None
    assert (silent.pending, on_time.pending, lively.pending) == (0, 1, 1)


@pytest.mark.anyio
async def test_a_transport_the_heartbeat_does_not_apply_to_is_neither_pinged_nor_swept() -> None:
    # An SSE stream cannot answer a ping: its liveness is its own (sse.py), not the heartbeat's.
    hub = Hub()
    stream = Connection(Stream(), hub.scheduler, user="u", outbox_limit=4)
    hub.add(stream)
    heartbeat = Heartbeat(hub, HeartbeatSettings(interval_seconds=1, timeout_seconds=2))
    assert heartbeat.tick(stream.last_seen + 1) == 0
    assert heartbeat.tick(stream.last_seen + 100) == 0, "silent for long past the deadline"
    assert stream.close_code is None
    assert stream.pending == 0, "no ping was queued for it"
