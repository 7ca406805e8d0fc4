"""SSE with Redis: ids and history shared by every process, so a client resumes on another."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import ClientConnection

from {{ cookiecutter.package_name }}.history import order

from .conftest import StartServer
from .messages import next_message
from .test_sse import SOON, open_stream, post

pytestmark = pytest.mark.anyio


async def test_a_client_resumes_on_another_process(start_server: StartServer) -> None:
    first, second = start_server(), start_server()
    async with open_stream(first) as stream:
        # Published on the second process, heard on the first through Redis.
        posted = [await post(second, n) for n in range(3)]
        seen = [await stream.next_message() for _ in range(3)]
    assert [frame["id"] for _, frame in seen] == posted
    missed = [await post(first, n) for n in range(3, 6)]

    # The first process could be gone by now: the second knows the ids and the history.
    first.stop()
    async with open_stream(second, last_event_id=seen[-1][0]) as stream:
        replayed = [await stream.next_message() for _ in range(3)]
        live = await post(second, 6)
        after = await stream.next_message()

    assert [frame["id"] for _, frame in replayed] == missed
    assert [frame["data"] for _, frame in replayed] == [3, 4, 5]
    assert after[1]["id"] == live


async def test_a_websocket_publish_on_one_process_reaches_a_stream_on_another(
    start_server: StartServer,
) -> None:
    first, second = start_server(), start_server()
    async with first.connect() as ws, open_stream(second) as stream:
        assert (await next_message(ws, SOON))["type"] == "welcome"
        await ws.send(json.dumps({"type": "publish", "data": "across"}))
        echo = await next_message(ws, SOON)
        _, frame = await stream.next_message()
    assert frame == echo
    assert frame["data"] == "across"


async def test_ids_follow_delivery_order_with_publishers_on_two_processes(
    start_server: StartServer,
) -> None:
    first, second = start_server(), start_server()
    count = 40  # from each publisher: within the default rate limit's burst

    async def publish_all(ws: ClientConnection, name: str) -> None:
        for n in range(count):
            await ws.send(json.dumps({"type": "publish", "data": [name, n]}))

    async with first.connect() as a, second.connect() as b, open_stream(first) as stream:
        for ws in (a, b):
            assert (await next_message(ws, SOON))["type"] == "welcome"
        await asyncio.gather(publish_all(a, "a"), publish_all(b, "b"))
        over_ws = [await next_message(a, SOON) for _ in range(2 * count)]
        over_sse = [(await stream.next_message())[1] for _ in range(2 * count)]
    ids = [frame["id"] for frame in over_ws]
    # Redis gives the id and publishes in one step, so ids increase in the order delivered.
    assert ids == sorted(set(ids), key=order)
    assert over_sse == over_ws
