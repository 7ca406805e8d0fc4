"""Capacity: the open-file limit raised at start-up, a connection cap refusing handshakes with
503 and `Retry-After` before accept, health checks answering at the cap, and failed accepts
(out of file descriptors) logged once per interval instead of a traceback each."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import socket
import subprocess
import sys
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from {{ cookiecutter.package_name }}.capacity import (
    ACCEPT_OUT_OF_RESOURCES,
    AcceptErrorLog,
    CapacitySettings,
    default_max_connections,
)

from .conftest import PACKAGE, Server, StartServer
from .messages import next_message

# The limit the server runs at below, and the cap it implies.
FILE_LIMIT = 256
CAP = default_max_connections(FILE_LIMIT)


def test_the_soft_file_limit_is_raised_to_the_hard_one() -> None:
    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, FILE_LIMIT))

    script = f"from {PACKAGE}.capacity import raise_file_limit; print(*raise_file_limit())"
    result = subprocess.run(
        [sys.executable, "-c", script],
        preexec_fn=low_soft_limit,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split() == ["200", str(FILE_LIMIT), str(FILE_LIMIT)]


def test_the_default_cap_keeps_file_descriptors_for_everything_else() -> None:
    assert default_max_connections(256) == 256 - 64, "at least 64"
    assert default_max_connections(4096) == 4096 - 409, "10%"
    assert default_max_connections(20000) == 20000 - 1024, "at most 1,024"
    assert default_max_connections(10) == 1


@pytest.mark.anyio
async def test_failed_accepts_are_one_warning_per_interval_and_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    others: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda loop, context: others.append(context))
    log = AcceptErrorLog(interval_seconds=0.2)
    log.install(loop)
    failure = {"message": ACCEPT_OUT_OF_RESOURCES, "exception": OSError(24, "Too many open files")}
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(5000):  # what uvicorn's backlog of 2,048 gives in under 3 s
                loop.call_exception_handler(failure)
            await asyncio.sleep(0.5)
            loop.call_exception_handler({"message": "something else"})
    finally:
        log.uninstall()
    assert loop.get_exception_handler() is not log, "uninstalled"
    loop.set_exception_handler(previous)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2, lines
    assert "Too many open files" in lines[0]
    assert "4999 times" in lines[1]
    assert not any(record.exc_info for record in caplog.records), "no traceback"
    assert [context["message"] for context in others] == ["something else"], "passed on"


def closed_by_the_server(raw: socket.socket) -> bool:
    raw.settimeout(0.01)
    try:
        return raw.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.anyio
@pytest.mark.slow
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_past_the_cap_handshakes_get_503_and_the_health_checks_still_answer(
    start_server: StartServer, loop: str
) -> None:
    server = start_server(SERVER_ACCEPT_ERROR_LOG_SECONDS="1", SERVER_LOOP=loop)
    assert "open-file limit: soft" in server.output(), "both limits logged at start-up"
    # As `ulimit -n 256` would; the cap follows the limit of the running process.
    resource.prlimit(server.process.pid, resource.RLIMIT_NOFILE, (FILE_LIMIT, FILE_LIMIT))
    clients = [await join(server) for _ in range(CAP)]
    try:
        with pytest.raises(InvalidStatus) as refused:
            await server.connect()
        assert refused.value.response.status_code == 503
        assert int(refused.value.response.headers["Retry-After"]) > 0
        async with server.http_client(timeout=10) as http:
{%- if cookiecutter.use_sse %}
            stream = await http.get("/sse")
            assert stream.status_code == 503, stream.text
            assert int(stream.headers["Retry-After"]) > 0
{%- endif %}
            assert (await http.get("/healthz")).status_code == 200
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["capacity"] is False
            assert ready.json()["connections"] == CAP
        await broadcast_reaches_everyone(clients)

        # Out of file descriptors (clients that connect and send nothing): the log stays small.
        size_before = len(server.output())
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(100)]
        await asyncio.sleep(3.5)  # three accept retries, a second apart, 2,048 failures each
        grown = server.output()[size_before:]
        dropped = sum(closed_by_the_server(raw) for raw in idle)
        for raw in idle:
            raw.close()
        assert "Traceback" not in grown, grown[:3000]
        assert len(grown) < 5000, f"{len(grown)} bytes of log in 3.5 s"
        if loop == "asyncio":
            # asyncio retries the accept each second and leaves the rest in the backlog.
            assert 1 <= grown.count("accept failed") <= 6, grown[:3000]
            assert dropped == 0
        else:
            # libuv accepts what it cannot keep and closes it at once (its EMFILE handling):
            # the clients see a closed connection, and nothing reaches the loop to log.
            assert dropped > 0
        async with server.http_client(timeout=10) as http:
            assert (await http.get("/healthz")).status_code == 200, "recovered"
        await broadcast_reaches_everyone(clients)
    finally:
        for ws in clients:
            with contextlib.suppress(Exception):
                await ws.close()


async def join(server: Server) -> ClientConnection:
    ws = await server.connect()
    assert (await next_message(ws))["type"] == "welcome"
    return ws


async def broadcast_reaches_everyone(clients: list[ClientConnection]) -> None:
    await clients[0].send(json.dumps({"type": "publish", "data": "still here"}))
    for ws in (clients[0], clients[len(clients) // 2], clients[-1]):
        assert (await next_message(ws))["data"] == "still here"


def test_an_empty_max_connections_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVER_MAX_CONNECTIONS", "")
    assert CapacitySettings().max_connections is None
    monkeypatch.setenv("SERVER_MAX_CONNECTIONS", "100")
    assert CapacitySettings().max_connections == 100
