"""A closed connection is freed by reference counting, not left for the garbage collector.

Cyclic garbage waits for a full collection, which walks every live object: a pause of about
100 ms per 1,000 connections (gc_pacing.py). If each closed connection left a cycle, a server
under churn would need those pauses. So a connection's whole life (handshake, rooms, writer,
control-frame callback, close) must leave nothing that only the collector can free.
"""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections import Counter

import pytest
import uvicorn
from websockets.asyncio.client import connect

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.hub import Connection
from {{ cookiecutter.package_name }}.settings import Settings
from {{ cookiecutter.package_name }}.ws_protocol import WebSocketProtocol

from .conftest import free_port

pytestmark = pytest.mark.anyio

CONNECTIONS = 600


def server_garbage() -> Counter[str]:
    """What a full collection finds to free of the server's connection objects, by type."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = Counter(
            type(thing).__qualname__
            for thing in gc.garbage
            if isinstance(thing, Connection | WebSocketProtocol)
            or (isinstance(thing, asyncio.Task) and thing.get_name().startswith("writer-"))
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return found


async def test_closed_connections_leave_no_reference_cycles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No pacer's full collections (they would free the cycles this test looks for).
    monkeypatch.setenv("SERVER_GC_GROWTH_PERCENT", "0")
    port = free_port()
    config = uvicorn.Config(
        create_app(Settings()),
        host="127.0.0.1",
        port=port,
        ws=WebSocketProtocol,
        ws_per_message_deflate=False,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())

    async def visit() -> None:
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.recv()  # welcome
            await ws.send('{"type":"publish","room":"lobby","data":1}')
            await ws.recv()

    try:
        for _ in range(100):
            if server.started:
                break
            await asyncio.sleep(0.05)
        with warnings.catch_warnings():
            # Earlier tests' garbage (an unclosed socket, say) is theirs, not this test's.
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        gc.disable()  # what is cyclic garbage stays until the collection below
        try:
            for _ in range(CONNECTIONS // 50):
                await asyncio.gather(*(visit() for _ in range(50)))
            await asyncio.sleep(0.5)  # the server's side of the last closes
            found = server_garbage()
        finally:
            gc.enable()
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
    assert not found, f"{CONNECTIONS} closed connections left reference cycles: {dict(found)}"
