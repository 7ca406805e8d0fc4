"""Recovery across processes through a real Redis: a client whose server is killed with
SIGKILL mid-stream reconnects to another one and ends with every message exactly once."""

from __future__ import annotations

import asyncio
import signal

import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from .conftest import StartServer
from .messages import next_message
from .redis_server import RedisServer
from .test_recovery import FAST_PUBLISHER, publish, resuming
from .test_redis_broker import FAST_BACKOFF, wait_for_readiness

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(120)]

TOTAL = 400


async def test_a_client_of_a_killed_process_resumes_on_another_with_every_message_once(
    start_server: StartServer, running_redis: RedisServer
) -> None:
    doomed = start_server(REDIS_URL=running_redis.url, **FAST_PUBLISHER)
    survivor = start_server(REDIS_URL=running_redis.url, **FAST_PUBLISHER)
    received: list[int] = []
    last_id: str | None = None

    async def read(ws: ClientConnection) -> None:
        nonlocal last_id
        while not received or received[-1] != TOTAL - 1:
            frame = await next_message(ws, seconds=30)
            if frame["type"] == "ping":
                continue  # the heartbeat's
            assert frame["type"] == "message", frame  # never a resync: the history has it all
            received.append(frame["data"])
            last_id = frame["id"]

    async with survivor.connect() as publisher:
        await next_message(publisher)
        client = await doomed.connect()
        await next_message(client)
        # Both processes listen to the room once one member's message reaches the other.
        for attempt in range(200):
            await publish(publisher, f"warm-up {attempt}")
            try:
                await next_message(client, seconds=0.5)
                break
            except TimeoutError:
                continue
        while True:  # the client takes what was still on its way
            try:
                await next_message(client, seconds=0.5)
            except TimeoutError:
                break

        async def stream() -> None:
            for n in range(TOTAL):
                await publish(publisher, n)
                if n % 10 == 0:
                    await asyncio.sleep(0.01)

        streaming = asyncio.create_task(stream())
        try:
            reading = asyncio.create_task(read(client))
            for _ in range(1000):  # mid-stream: once it has some, and before it has all
                if len(received) >= TOTAL // 4:
                    break
                await asyncio.sleep(0.005)
            doomed.process.send_signal(signal.SIGKILL)
            doomed.process.wait()
            with pytest.raises((ConnectionClosed, OSError)):
                await reading
            assert received, "the kill came before the stream"
            assert received[-1] < TOTAL - 1, "the kill came after the stream"
            async with resuming(survivor, last_id) as back:
                assert (await next_message(back))["type"] == "welcome"
                await read(back)
        finally:
            await streaming
            await client.close()
    assert received == list(range(TOTAL)), received


async def test_an_idle_rooms_history_expires_in_redis(
    start_server: StartServer, running_redis: RedisServer
) -> None:
    server = start_server(REDIS_URL=running_redis.url, HISTORY_TTL_SECONDS="30")
    async with server.connect() as ws:
        await next_message(ws)
        await publish(ws, "kept for a while")
        assert (await next_message(ws))["data"] == "kept for a while"
    redis = Redis.from_url(running_redis.url, decode_responses=True)
    try:
        keys = await redis.keys("*:history")
        assert len(keys) == 1, keys
        # Refreshed by every message: the room's history goes 30 s after its last one.
        assert 0 < await redis.pttl(keys[0]) <= 30_000
    finally:
        await redis.aclose()


async def test_a_resume_while_redis_is_down_gets_a_resync_and_the_connection_lives_on(
    start_server: StartServer, running_redis: RedisServer
) -> None:
    server = start_server(REDIS_URL=running_redis.url, **FAST_BACKOFF)
    async with server.connect() as ws:
        await next_message(ws)
        await publish(ws, "before")
        last_id = (await next_message(ws))["id"]
    running_redis.kill()
    await asyncio.to_thread(wait_for_readiness, server, 503, 400)
    # The history cannot be read: the client is told to reload rather than left waiting, and
    # its connection stays open (the broker's outage is no fault of its).
    async with resuming(server, last_id) as back:
        assert (await next_message(back))["type"] == "welcome"
        resync = await next_message(back, seconds=10)
        assert resync["type"] == "resync", resync
        await back.send('{"type": "nonsense"}')
        assert (await next_message(back))["type"] == "error", "still served"
