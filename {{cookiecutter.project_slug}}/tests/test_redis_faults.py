"""Redis faults with real processes: a Redis that hangs (SIGSTOP) or restarts, a publish whose
outcome is unknown and its retry, and one process cut off from Redis while the others go on."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from .conftest import Server, StartServer
from .messages import next_message
from .redis_server import HeldProxy, RedisServer
from .test_redis_broker import (
    FAST_BACKOFF,
    ROOM,
    UNLIMITED,
    join,
    wait_for_readiness,
    wait_for_subscribers,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(120)]


async def publish(ws: ClientConnection, data: object, key: str | None = None) -> None:
    message: dict[str, object] = {"type": "publish", "room": ROOM, "data": data}
    if key is not None:
        message["key"] = key
    await ws.send(json.dumps(message))


async def until_data(ws: ClientConnection, last: object) -> list[dict[str, Any]]:
    """Every message up to and including the one whose data is `last`."""
    messages = []
    while True:
        message = await next_message(ws)
        messages.append(message)
        if message.get("data") == last:
            return messages


def readiness_after(server: Server, status: int) -> None:
    wait_for_readiness(server, status, attempts=400)  # 20 s at most: far above the bound


async def test_a_hung_redis_fails_readiness_logs_once_and_recovers(
    start_server: StartServer, running_redis: RedisServer
) -> None:
    env = {"REDIS_URL": running_redis.url, **FAST_BACKOFF}
    servers = [start_server(**env), start_server(**env)]
    members = [await join(server) for server in servers]
    wait_for_subscribers(running_redis.url, ROOM, 2)

    running_redis.pause()
    try:
        for server in servers:  # the PING goes unanswered: not ready
            await asyncio.to_thread(readiness_after, server, 503)
    finally:
        running_redis.resume()
    for server in servers:
        await asyncio.to_thread(readiness_after, server, 200)

    for server in servers:
        lines = server.output().splitlines()
        # One line when it goes, not one per attempt, and one when it is back.
        gone = [line for line in lines if "redis unreachable at" in line]
        back = [line for line in lines if "redis back at" in line]
        assert len(gone) == 1, lines
        assert " WARNING " in gone[0], gone
        assert "no answer to PING" in gone[0], gone
        assert len(back) == 1, lines
        assert " INFO " in back[0], back
    # The listeners subscribed again: a message reaches both processes.
    wait_for_subscribers(running_redis.url, ROOM, 2)
    await publish(members[0], "after")
    for ws in members:
        messages = await until_data(ws, "after")
        assert [m for m in messages if m["type"] == "message"][-1]["data"] == "after"
        await ws.close()


async def test_a_publish_caught_by_a_freeze_is_unknown_and_its_retry_not_delivered_twice(
    start_server: StartServer, running_redis: RedisServer
) -> None:
    env = {
        "REDIS_URL": running_redis.url,
        "REDIS_PUBLISH_TIMEOUT_SECONDS": "0.5",
        # The freeze is noticed late, so that the publish goes out to the frozen Redis.
        "REDIS_HEALTH_CHECK_INTERVAL_SECONDS": "30",
        **FAST_BACKOFF,
        **UNLIMITED,
    }
    first, second = start_server(**env), start_server(**env)
    sender, member = await join(first), await join(second)
    wait_for_subscribers(running_redis.url, ROOM, 2)
    # The publisher's connection is open (a connection still opening when Redis freezes
    # has sent nothing: that publish is simply `broker_unavailable`).
    await publish(sender, "warm")
    for ws in (sender, member):
        assert (await next_message(ws))["data"] == "warm"

    running_redis.pause()
    try:
        await publish(sender, "once", key="client-chosen-1")
        error = await next_message(sender)
    finally:
        running_redis.resume()
    # It went out: nobody can say whether Redis will run it. It does, once it runs again.
    assert error["type"] == "error", error
    assert error["code"] == "publish_outcome_unknown", error
    echo = await next_message(sender)
    assert (echo["data"], echo["key"]) == ("once", "client-chosen-1")

    # The client does as the error says: publishes again with the same key. Not delivered.
    await publish(sender, "once", key="client-chosen-1")
    refused = await next_message(sender)
    assert refused["code"] == "already_published", refused
    await publish(sender, "end")
    for ws in (sender, member):
        messages = await until_data(ws, "end")
        assert [m.get("data") for m in messages if m["type"] == "message"].count("once") <= 1
        await ws.close()
    received = [m.get("data") for m in messages if m["type"] == "message"]
    assert received == ["once", "end"], received  # the member: once, then the next


async def test_the_first_publish_after_a_restart_works(
    start_server: StartServer, running_redis: RedisServer
) -> None:
    server = start_server(REDIS_URL=running_redis.url, **FAST_BACKOFF)
    ws = await join(server)
    # Several publishes at once use several pooled connections; all go stale in the restart.
    for n in range(3):
        await publish(ws, n)
    assert [(await next_message(ws))["data"] for _ in range(3)] == [0, 1, 2]

    running_redis.kill()
    await asyncio.to_thread(readiness_after, server, 503)
    running_redis.start()
    await asyncio.to_thread(readiness_after, server, 200)

    await publish(ws, "first after")
    messages = await until_data(ws, "first after")
    assert [m["type"] for m in messages] in (["message"], ["resync", "message"]), messages
    await ws.close()


async def test_members_of_a_process_cut_off_from_redis_get_every_message_or_a_resync(
    start_server: StartServer, running_redis: RedisServer, held_proxy: HeldProxy
) -> None:
    publisher = start_server(REDIS_URL=running_redis.url, **FAST_BACKOFF, **UNLIMITED)
    cut_off = start_server(REDIS_URL=held_proxy.url, **FAST_BACKOFF)
    sender, member = await join(publisher), await join(cut_off)
    wait_for_subscribers(running_redis.url, ROOM, 2)
    await publish(sender, 0)
    for ws in (sender, member):
        assert (await next_message(ws))["data"] == 0

    held_proxy.hold()  # only this process's connections: the publisher's Redis carries on
    try:
        await asyncio.to_thread(readiness_after, cut_off, 503)
        for n in range(1, 11):  # published while the process is away
            await publish(sender, n)
        assert [(await next_message(sender))["data"] for _ in range(10)] == list(range(1, 11))
    finally:
        held_proxy.release()
    await asyncio.to_thread(readiness_after, cut_off, 200)
    wait_for_subscribers(running_redis.url, ROOM, 2)
    for n in range(11, 16):
        await publish(sender, n)

    messages = await until_data(member, 15)
    data = [m["data"] for m in messages if m["type"] == "message"]
    if any(m["type"] == "resync" for m in messages):  # the history could not cover the gap
        assert data == sorted(set(data)), data
    else:  # the gap was filled: every message once, in order
        assert data == list(range(1, 16)), data
    for ws in (sender, member):
        await ws.close()
