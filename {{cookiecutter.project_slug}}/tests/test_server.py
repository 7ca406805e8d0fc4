"""The service as users run it: a real uvicorn process on loopback, real sockets, real signals."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
from pathlib import Path

import httpx2
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from .conftest import Server, StartServer
from .messages import next_message

pytestmark = pytest.mark.anyio


async def join(server: Server) -> ClientConnection:
    ws = await server.connect()
    assert (await next_message(ws))["type"] == "welcome"
    return ws


def stalled_client(server: Server, *, receive_buffer: int | None = None) -> socket.socket:
    """A client that completes the handshake and then never reads another byte; with
    `receive_buffer`, its socket's receive buffer is that small, so it fills at once."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    headers = "".join(f"{name}: {value}\r\n" for name, value in server.ws_headers.items())
    raw.sendall(
        (
            f"GET {server.ws_path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
        ).encode()
    )
    assert raw.recv(12) == b"HTTP/1.1 101", "the handshake was refused"
    return raw


def connection_count(server: Server) -> int:
    count: int = httpx2.get(f"{server.http_url}/readyz", timeout=5).json()["connections"]
    return count


async def test_a_client_that_never_reads_delays_nobody_and_is_closed_on_overflow(
    start_server: StartServer,
) -> None:
    server = start_server(
        HUB_OUTBOX_LIMIT="32", HUB_RATE_PER_SECOND="100000", HUB_RATE_BURST="100000"
    )
    stalled = stalled_client(server)
    publisher = await join(server)
    reader = await join(server)
    payload = "x" * 30_000
    count = 1000  # 30 MB: more than the stalled socket's kernel buffers and outbox can hold

    async def receive_all(ws: ClientConnection) -> list[int]:
        return [(await next_message(ws))["data"][0] for _ in range(count)]

    others = asyncio.create_task(receive_all(reader))
    echoes = []
    for n in range(count):
        await publisher.send(json.dumps({"type": "publish", "data": [n, payload]}))
        # Waiting for our own echo paces the publisher to what a healthy client can take.
        echoes.append((await next_message(publisher))["data"][0])
    assert echoes == list(range(count))
    assert await others == list(range(count)), "the other healthy client got all, in order"
    for _ in range(100):
        if connection_count(server) == 2:
            break
        await asyncio.sleep(0.1)
    assert connection_count(server) == 2, "the stalled client was closed and forgotten"

    # Its socket, drained now, ends: the server has let go of it, with a reset if the close
    # frame could not get out in HUB_CLOSE_TIMEOUT_SECONDS (test_bounded_resources.py).
    stalled.settimeout(30)
    with contextlib.suppress(ConnectionResetError):
        while stalled.recv(1 << 16):
            pass
    stalled.close()
    await publisher.close()
    await reader.close()


async def test_sigterm_closes_every_socket_with_1012_and_exits(start_server: StartServer) -> None:
    server = start_server(SERVER_SHUTDOWN_TIMEOUT_SECONDS="3")
    clients = [await join(server) for _ in range(3)]
    server.process.terminate()
    for ws in clients:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), timeout=10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1012
    # uvicorn finishes its graceful shutdown, then re-raises SIGTERM so the exit status says why.
    assert server.stop() in (0, -signal.SIGTERM), server.output()
    assert "Finished server process" in server.output()


async def test_a_frame_over_the_limit_is_refused_by_the_server_with_1009(
    start_server: StartServer,
) -> None:
    server = start_server(HUB_MAX_MESSAGE_BYTES="4096")
    ws = await join(server)
    await ws.send(json.dumps({"type": "publish", "data": "x" * 5000}))
    with pytest.raises(ConnectionClosed) as closed:
        await next_message(ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009
    # The service is unharmed.
    other = await join(server)
    await other.send(json.dumps({"type": "publish", "data": "ok"}))
    assert (await next_message(other))["data"] == "ok"
    await other.close()


async def test_health_endpoints_answer_over_http(start_server: StartServer) -> None:
    server = start_server()
    async with httpx2.AsyncClient(base_url=server.http_url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/readyz")).status_code == 200


def mapped_extensions(server: Server) -> set[str]:
    """Which of uvloop and httptools the server process has loaded (their compiled modules
    are mapped into it only once imported)."""
    maps = Path(f"/proc/{server.process.pid}/maps").read_text(encoding="utf-8")
    return {name for name in ("uvloop", "httptools") if f"/{name}/" in maps}


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc (Linux)")
async def test_the_service_runs_on_uvloop_and_httptools_unless_told_otherwise(
    start_server: StartServer,
) -> None:
    # The defaults (SERVER_LOOP=auto, SERVER_HTTP=auto) take them: they are dependencies,
    # chosen by the template's bench (less CPU per delivery, a lower tail).
    fast = start_server()
    plain = start_server(SERVER_LOOP="asyncio", SERVER_HTTP="h11")
    assert mapped_extensions(fast) == {"uvloop", "httptools"}, fast.output()
    # (httptools may be imported all the same, by uvicorn's configuration; the loop is not.)
    assert "uvloop" not in mapped_extensions(plain), plain.output()
    for server in (fast, plain):
        async with server.connect() as ws:
            assert (await next_message(ws))["type"] == "welcome"
