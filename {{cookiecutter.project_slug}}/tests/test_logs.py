"""What the service writes to its log, read from the output of real server processes."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection{% if cookiecutter.auth != "none" %}, connect{% endif %}
from websockets.exceptions import ConnectionClosed{% if cookiecutter.auth != "none" %}, InvalidStatus{% endif %}

from .conftest import PACKAGE, Server, StartServer

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

# uvicorn's own command line, which the README names too.
UVICORN = ("-m", "uvicorn", "--factory", f"{PACKAGE}.app:create_app")
# Every documented way to start the service: the arguments of `python`.
WAYS_TO_RUN = {
    "python -m package": ("-m", PACKAGE),
    "python -m package serve": ("-m", PACKAGE, "serve"),
    "uvicorn's command line": UVICORN,
{%- if cookiecutter.use_redis %}
    "uvicorn's command line, two workers": (*UVICORN, "--workers", "2"),
{%- endif %}
}


def exchange(server: Server, head: str) -> bytes:
    """Send a request head on a raw socket; what the server answers before it closes (or goes
    quiet, as an accepted WebSocket does)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(head.encode())
        answer = b""
        try:
            while chunk := raw.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and answer.startswith(b"HTTP/1.1 101"):
                    break
        except TimeoutError:
            pass
    return answer


def targets(server: Server, secret: str) -> list[str]:
    """The request-target forms of RFC 9112 section 3.2, each carrying `secret` in a query string
    where it can (and in a percent-encoded one)."""
    authority = f"127.0.0.1:{server.port}"
    forms = []
    for path in ("/sse", "/ws", "/healthz"):
        forms += [
            f"{path}?token={secret}",  # origin-form
            f"http://{authority}{path}?token={secret}",  # absolute-form
            f"{path.lstrip('/')}?token={secret}",  # no leading slash
            f"{path}%3Ftoken={secret}",  # the question mark percent-encoded
        ]
    return [*forms, "*", f"*?token={secret}"]  # asterisk-form


def send_every_target_form(server: Server, secret: str) -> int:
    """Each target form as a plain request and as a WebSocket upgrade; how many were sent."""
    authority = f"127.0.0.1:{server.port}"
    upgrade = (
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    )
    sent = 0
    for target in targets(server, secret):
        method = "OPTIONS" if target.startswith("*") else "GET"
        for extra in ("Connection: close\r\n", upgrade):
            head = f"{method} {target} HTTP/1.1\r\nHost: {authority}\r\n{extra}\r\n"
            answer = exchange(server, head)
            assert answer.startswith(b"HTTP/1.1 "), (target, answer)
            sent += 1
    return sent


@pytest.mark.parametrize("way", WAYS_TO_RUN)
async def test_no_credential_reaches_the_log_whatever_the_target_form(
    start_server: StartServer, way: str
) -> None:
    server = start_server(*WAYS_TO_RUN[way])
    secret = f"s3cret-{os.urandom(8).hex()}"
    # The test user's credentials too: a token in a query string, or a session cookie.
    cookies = server.ws_headers.get("Cookie", "")
    secrets = [secret, *server.http_params.values(), *(c.partition("=")[2] for c in [cookies] if c)]
    sent = send_every_target_form(server, secret)
    # A real client too, presenting the test user's credentials (a real token, in that mode).
    async with server.connect() as ws:
        await ws.recv()
    assert server.stop() in (0, -15), server.output()
    output = server.output()
    for leaked in secrets:
        assert leaked not in output, f"{leaked} was logged:\n{output}"
    # Each request was logged (or the test proves nothing), its query string redacted.
    assert output.count("[redacted]") >= sent // 2, output


def json_lines(server: Server) -> list[dict[str, Any]]:
    """Every line of the server's output, each of which must be one JSON object."""
    lines = []
    for line in server.output().splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert {"ts", "level", "logger", "msg", "pid"} <= record.keys(), line
        lines.append(record)
    return lines


async def connection_events(server: Server, count: int) -> list[dict[str, Any]]:
    """The service's connection lines, once there are `count` of them (the server writes them
    as it goes)."""
    for _ in range(100):
        events = [line for line in json_lines(server) if line["logger"].endswith(".connections")]
        if len(events) >= count:
            return events
        await asyncio.sleep(0.1)
    raise AssertionError(f"expected {count} connection lines:\n{server.output()}")


async def read_until_closed(ws: ClientConnection) -> None:
    while True:
        await ws.recv()


async def test_json_logs_one_line_per_connection_opened_closed_and_refused(
    start_server: StartServer,
) -> None:
    server = start_server(SERVER_LOG_FORMAT="json", HUB_RATE_PER_SECOND="1", HUB_RATE_BURST="2")
    # A client that leaves, and one the server closes for sending too fast (1008).
    async with server.connect() as ws:
        welcome = json.loads(await ws.recv())
    flooder = await server.connect()
    flooded = json.loads(await flooder.recv())
    for _ in range(3):  # one more than the burst
        await flooder.send(json.dumps({"type": "publish", "data": 1}))
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(read_until_closed(flooder), 10)
    expected = 4
{%- if cookiecutter.auth != "none" %}
    # A handshake without credentials is refused before accept.
    with pytest.raises(InvalidStatus):
        async with connect(f"ws://127.0.0.1:{server.port}/ws"):
            pass
    expected += 1
{%- endif %}
{%- if cookiecutter.use_sse %}
    async with (
        server.http_client(timeout=10) as http,
        http.stream("GET", "/sse") as response,
    ):
        assert response.status_code == 200
        await anext(response.aiter_bytes())  # the retry hint: the stream is open
    expected += 2
{%- endif %}
    events = await connection_events(server, expected)
    by_conn: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_conn.setdefault(event.get("conn", "refused"), []).append(event)

    opened, closed = by_conn[welcome["connection"]]
    assert opened["msg"] == "connection opened"
    assert opened["level"] == "INFO"
    assert opened["transport"] == "ws"
    assert opened["user"] == welcome["user"]
    assert opened["rooms"] == welcome["rooms"]
    assert closed["msg"] == "connection closed by client"
    assert (closed["by"], closed["code"], closed["level"]) == ("client", 1000, "INFO")
    assert closed["rooms"] == welcome["rooms"], "its rooms when it closed"
    assert isinstance(closed["duration_s"], float)
    assert closed["duration_s"] >= 0
    assert {"conn", "user", "transport", "code", "reason", "duration_s", "rooms"} <= closed.keys()

    _, cut_off = by_conn[flooded["connection"]]
    assert cut_off["msg"] == "connection closed by server"
    assert (cut_off["by"], cut_off["code"], cut_off["level"]) == ("server", 1008, "WARNING")
    assert cut_off["reason"] == "rate limit exceeded"
    assert cut_off["user"] == flooded["user"]
{%- if cookiecutter.auth != "none" %}

    (refused,) = by_conn["refused"]
    assert refused["msg"] == "connection refused"
    assert refused["transport"] == "ws"
    assert refused["status"] in (401, 403)
    assert refused["reason"]
{%- endif %}
{%- if cookiecutter.use_sse %}

    (stream_opened, stream_closed) = [e for e in events if e.get("transport") == "sse"]
    assert stream_opened["msg"] == "connection opened"
    assert stream_closed["msg"] == "connection closed by client"
    assert stream_closed["conn"] == stream_opened["conn"]
    assert stream_closed["rooms"] == stream_opened["rooms"] != []
{%- endif %}
    assert len(events) == expected, "one line for each, no more"

    # uvicorn's own lines are JSON too (json_lines checks every line), access lines with fields.
    assert server.stop() in (0, -15)
    lines = json_lines(server)
    assert any(line["logger"] == "uvicorn.error" for line in lines)
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert access, "the health checks at start-up were logged"
    assert {"client", "method", "path", "status"} <= access[0].keys()


async def test_text_logs_have_a_timestamp_and_a_level(start_server: StartServer) -> None:
    server = start_server()
    async with server.connect() as ws:
        await ws.recv()
    assert server.stop() in (0, -15)
    opened = next(line for line in server.output().splitlines() if "connection opened" in line)
    timestamp, level, logger, *_ = opened.split(" ")
    assert timestamp.endswith("Z")
    assert timestamp[:4].isdigit()
    assert timestamp[10] == "T"
    assert (level, logger) == ("INFO", f"{PACKAGE}.connections")
    assert " transport=ws " in opened
