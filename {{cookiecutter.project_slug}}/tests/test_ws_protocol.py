"""The template's uvicorn protocol: its flow-control flag behaves as the Event it replaces, and
its send without a coroutine sends exactly when uvicorn's own `send` would not wait or refuse."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect

from {{ cookiecutter.package_name }}.ws_protocol import WebSocketProtocol, WritableFlag

from .conftest import free_port

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
        protocol: WebSocketProtocol = send.__self__
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
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(100):
            if server.started:
                break
            await asyncio.sleep(0.05)
        async with connect(f"ws://127.0.0.1:{port}/") as ws:  # offers compression
            extensions = [type(extension).__name__ for extension in ws.protocol.extensions]
            assert extensions == (["PerMessageDeflate"] if deflate else [])
            # Iteration ends at the server's normal close.
            received = await asyncio.wait_for(receive_all(ws), 5)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
    assert answers == {
        "before accept": False,
        "open": True,
        "paused": False,
        "resumed": True,
        "large": True,
        "after close": False,
    }
    assert received == ["premier é", medium, large]
