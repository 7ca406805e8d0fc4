"""What a client that stops reading can cost the server: bounded memory, and its socket back.

Real uvicorn processes, and raw clients whose kernel receive buffer is tiny (set before
connect), so the server's writes back up after a few kilobytes. The figures read are the
server's own: its resident memory (`VmRSS`), its open descriptors, and its TCP sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Callable

import httpx2
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from .conftest import Server, StartServer
from .messages import next_message
from .test_server import connection_count, stalled_client

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

# A client socket's receive buffer; the kernel doubles it and rounds it up to its minimum.
TINY_BUFFER = 4096
# How long a bounded poll goes on before its assertion fails: a ceiling, never a measurement.
PATIENCE = 15.0
MB = 1024 * 1024


def raw_client(server: Server) -> socket.socket:
    """A client with a tiny receive buffer that completes the handshake and reads no further."""
    return stalled_client(server, receive_buffer=TINY_BUFFER)


def ping_frame(payload: bytes) -> bytes:
    """A client's PING frame: clients mask, and the all-zero mask leaves the payload as is."""
    assert len(payload) <= 125, "a control frame's payload is at most 125 bytes"
    return bytes([0x89, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


def resident_bytes(server: Server) -> int:
    """The server process's resident memory, from /proc (psutil is not a dependency)."""
    with open(f"/proc/{server.process.pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line in /proc/<pid>/status")


def server_side(server: Server, client: socket.socket) -> list[str]:
    """The server's end of `client`'s TCP connection, as `ss -tn` would show it: its line of
    /proc/net/tcp (state, queues, inode...), split; empty once the socket is gone."""
    client_port = client.getsockname()[1]
    local, remote = f"0100007F:{server.port:04X}", f"0100007F:{client_port:04X}"
    with open(f"/proc/{server.process.pid}/net/tcp", encoding="ascii") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                return fields
    return []


def server_side_established(server: Server, client: socket.socket) -> bool:
    fields = server_side(server, client)
    return bool(fields) and fields[3] == "01"  # TCP_ESTABLISHED


def descriptor_of(server: Server, client: socket.socket) -> tuple[str, str]:
    """The path of the server's file descriptor for its end of `client`'s connection, and the
    socket it links to (`socket:[inode]`)."""
    fields = server_side(server, client)
    assert fields, "the server has no socket for this client"
    target = f"socket:[{fields[9]}]"
    directory = f"/proc/{server.process.pid}/fd"
    for fd in os.listdir(directory):
        with contextlib.suppress(FileNotFoundError):
            if os.readlink(f"{directory}/{fd}") == target:
                return f"{directory}/{fd}", target
    raise AssertionError(f"no descriptor of the server links to {target}")


def still_open(descriptor: tuple[str, str]) -> bool:
    path, target = descriptor
    try:
        return os.readlink(path) == target
    except FileNotFoundError:
        return False


async def join(server: Server) -> ClientConnection:
    ws = await server.connect()
    assert (await next_message(ws))["type"] == "welcome"
    return ws


async def read_until_closed(ws: ClientConnection) -> None:
    """Read (and drop) messages until the connection closes; TimeoutError if it stays open."""
    while True:
        await next_message(ws)


async def publish_until(server: Server, publisher: ClientConnection, connections: int) -> None:
    """Publish 30 KB messages, each paced by its own echo, until the server holds this many
    connections (a stalled client was closed), or 1,000 messages (30 MB) were not enough."""
    payload = "x" * 30_000
    for n in range(1000):
        await publisher.send(json.dumps({"type": "publish", "data": [n, payload]}))
        while (await next_message(publisher))["type"] != "message":
            pass
        if n % 10 == 9 and connection_count(server) == connections:
            return
    raise AssertionError(f"still {connection_count(server)} connections after 30 MB")


async def poll(condition_met: Callable[[], bool], what: str) -> None:
    """Wait, bounded, for a condition to hold."""
    deadline = time.monotonic() + PATIENCE
    while not condition_met():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {PATIENCE} s")
        await asyncio.sleep(0.1)


async def test_pings_from_a_client_that_never_reads_leave_the_servers_memory_bounded(
    start_server: StartServer,
) -> None:
    # Limits high enough that the rate limit never closes the client: the bound tested here is
    # the transport's own, whatever rate a client is allowed.
    server = start_server(HUB_RATE_PER_SECOND="10000000", HUB_RATE_BURST="10000000")
    flooder = raw_client(server)
    before = resident_bytes(server)
    # 200,000 pings of 125 bytes (26 MB): each would be answered by a pong just as large.
    chunk = ping_frame(b"p" * 125) * 1000
    flooder.settimeout(2)
    sent = 0
    try:
        for _ in range(200):
            flooder.sendall(chunk)
            sent += 1000
    except TimeoutError:
        pass  # the server stopped reading: the bound this test is about
    # The server may still be reading what was sent: watch its memory for a while.
    peak = before
    for _ in range(20):
        peak = max(peak, resident_bytes(server))
        await asyncio.sleep(0.1)
    growth = peak - before
    print(f"sent {sent} pings; server RSS {before / MB:.1f} MB -> {peak / MB:.1f} MB")
    assert growth < 8 * MB, f"{sent} pings grew the server by {growth / MB:.1f} MB"
    assert httpx2.get(f"{server.http_url}/healthz", timeout=5).status_code == 200
    flooder.close()


async def test_pings_count_against_the_clients_rate_limit(start_server: StartServer) -> None:
    server = start_server(HUB_RATE_PER_SECOND="1", HUB_RATE_BURST="20")
    ws = await join(server)
    for n in range(100):
        # Not awaited: a flood does not wait for its pongs.
        await ws.ping(str(n))
    with pytest.raises(ConnectionClosed) as closed:
        await read_until_closed(ws)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "rate limit exceeded")
    other = await join(server)  # the limit is the flooder's alone
    await other.close()


async def test_a_stalled_client_closed_as_a_slow_consumer_has_its_socket_released(
    start_server: StartServer,
) -> None:
    server = start_server(
        HUB_OUTBOX_LIMIT="8", HUB_CLOSE_TIMEOUT_SECONDS="0.5", SERVER_SHUTDOWN_TIMEOUT_SECONDS="5"
    )
    publisher = await join(server)
    stalled = raw_client(server)
    await poll(lambda: connection_count(server) == 2, "2 connections")
    assert server_side_established(server, stalled)
    descriptor = descriptor_of(server, stalled)
    await publish_until(server, publisher, connections=1)
    # Its close frame cannot get out: the server drops the socket, fd and buffers at once.
    await poll(lambda: not server_side_established(server, stalled), "released (ss -tn)")
    await poll(lambda: not still_open(descriptor), "its fd closed")
    await publisher.close()
    stalled.close()
    assert server.stop() in (0, -signal.SIGTERM), server.output()
    assert "timeout graceful shutdown exceeded" not in server.output()


async def test_sigterm_does_not_wait_for_a_client_that_stopped_reading(
    start_server: StartServer,
) -> None:
    server = start_server(
        HUB_CLOSE_TIMEOUT_SECONDS="0.5",
        SERVER_SHUTDOWN_TIMEOUT_SECONDS="3",
        HUB_RATE_PER_SECOND="100000",
        HUB_RATE_BURST="100000",
    )
    publisher = await join(server)
    stalled = raw_client(server)
    await poll(lambda: connection_count(server) == 2, "2 connections")
    # 8 MB for the stalled client, more than the kernel will hold for it, fewer frames than its
    # outbox holds: backed up, but never closed as a slow consumer.
    payload = "x" * 30_000
    for n in range(270):
        await publisher.send(json.dumps({"type": "publish", "data": [n, payload]}))
        while (await next_message(publisher))["type"] != "message":
            pass
    assert connection_count(server) == 2, "the stalled client is still a member"
    assert server.stop() in (0, -signal.SIGTERM), server.output()
    assert "timeout graceful shutdown exceeded" not in server.output(), server.output()
    stalled.close()
