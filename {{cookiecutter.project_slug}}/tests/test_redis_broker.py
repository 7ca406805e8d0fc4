"""Redis fanout against a real Redis-compatible server: processes sharing rooms, exactly once
and in order, subscriptions only while a room has members here, and Redis going away."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection

from {{ cookiecutter.package_name }}.protocol import DEFAULT_ROOM
from {{ cookiecutter.package_name }}.redis_broker import RedisSettings, redacted

from .conftest import Server, StartServer
from .messages import next_message, receive
from .redis_server import RedisServer

# A message with no room goes to the default room, which every client joins when it names no
# room: the same in every combination, with or without the rooms feature.
ROOM = DEFAULT_ROOM
# The server processes may publish as fast as the tests want.
UNLIMITED = {"HUB_RATE_PER_SECOND": "100000", "HUB_RATE_BURST": "100000"}
# Reconnect quickly, so that a test sees recovery within a few seconds.
FAST_BACKOFF = {"REDIS_BACKOFF_MIN_SECONDS": "0.05", "REDIS_BACKOFF_MAX_SECONDS": "0.5"}


def channel(room: str) -> str:
    return RedisSettings().channel_prefix + room


def subscribers(url: str, room: str) -> int:
    """How many connections (listeners: one per process) Redis has on a room's channel."""
    with redis.Redis.from_url(url, decode_responses=True) as client:
        counts: list[tuple[str, int]] = client.pubsub_numsub(channel(room))
        return counts[0][1]


def wait_for_subscribers(url: str, room: str, expected: int, attempts: int = 100) -> None:
    for _ in range(attempts):
        if subscribers(url, room) == expected:
            return
        time.sleep(0.05)
    raise AssertionError(f"{channel(room)} has {subscribers(url, room)} subscribers")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test's own (not started), which it may kill and start again."""
    server = RedisServer(tmp_path)
    yield server
    server.kill()


def readiness(server: Server) -> tuple[int, dict[str, Any]]:
    response = httpx2.get(f"{server.http_url}/readyz", timeout=5)
    body: dict[str, Any] = response.json()
    return response.status_code, body


def wait_for_readiness(server: Server, status: int, attempts: int = 200) -> dict[str, Any]:
    for _ in range(attempts):
        code, body = readiness(server)
        if code == status:
            return body
        time.sleep(0.05)
    raise AssertionError(f"/readyz never answered {status}:\n{server.output()}")


async def join(server: Server) -> ClientConnection:
    ws = await server.connect()
    welcome = await next_message(ws)
    assert welcome["type"] == "welcome"
    assert ROOM in welcome["rooms"]
    return ws


async def publish(ws: ClientConnection, data: object) -> None:
    await ws.send(json.dumps({"type": "publish", "room": ROOM, "data": data}))


# Settings.


def test_settings_take_redis_and_rediss_urls_only() -> None:
    assert RedisSettings(url="redis://h:6379/0").url == "redis://h:6379/0"
    assert RedisSettings(url="rediss://user:pw@h:6380/1").url.startswith("rediss://")
    with pytest.raises(ValidationError, match=r"redis:// or rediss://"):
        RedisSettings(url="http://h:6379")
    with pytest.raises(ValidationError, match="backoff_min_seconds"):
        RedisSettings(backoff_min_seconds=5, backoff_max_seconds=1)


def test_logged_urls_hide_the_password() -> None:
    assert redacted("rediss://user:secret@h:6380/1") == "rediss://user:***@h:6380/1"
    assert redacted("redis://h:6379/0") == "redis://h:6379/0"


# One process (in process, through TestClient), a real Redis.


def test_a_process_listens_to_a_room_only_while_it_has_members_here(
    client: TestClient, redis_url: str
) -> None:
    wait_for_subscribers(redis_url, ROOM, 0)  # earlier tests' processes have let go
    with client.websocket_connect("/ws") as first, client.websocket_connect("/ws") as second:
        for ws in (first, second):
            assert receive(ws)["type"] == "welcome"
        wait_for_subscribers(redis_url, ROOM, 1)  # two members, one listener
        first.send_json({"type": "publish", "room": ROOM, "data": "hello"})
        for ws in (first, second):
            assert receive(ws)["data"] == "hello"
        first.close()
        # The room still has a member here: still subscribed.
        second.send_json({"type": "publish", "room": ROOM, "data": "still here"})
        assert receive(second)["data"] == "still here"
        assert subscribers(redis_url, ROOM) == 1
    wait_for_subscribers(redis_url, ROOM, 0)  # the last member left: unsubscribed
    with redis.Redis.from_url(redis_url, decode_responses=True) as plain:
        assert channel(ROOM) not in plain.pubsub_channels(channel("*"))


def test_one_publisher_is_heard_once_in_order_by_every_member(client: TestClient) -> None:
    with client.websocket_connect("/ws") as sender, client.websocket_connect("/ws") as member:
        for ws in (sender, member):
            assert receive(ws)["type"] == "welcome"
        for n in range(30):
            sender.send_json({"type": "publish", "room": ROOM, "data": n})
        for ws in (sender, member):
            assert [receive(ws)["data"] for _ in range(30)] == list(range(30))
        # Nothing twice: the next frame either gets is the one published after.
        member.send_json({"type": "publish", "room": ROOM, "data": "end"})
        for ws in (sender, member):
            assert receive(ws)["data"] == "end"


# Real uvicorn processes on loopback, sharing one Redis.


@pytest.mark.anyio
async def test_members_on_two_processes_get_every_message_once_in_each_publishers_order(
    start_server: StartServer, redis_url: str
) -> None:
    a = start_server(REDIS_URL=redis_url, **UNLIMITED)
    b = start_server(REDIS_URL=redis_url, **UNLIMITED)
    on_a = [await join(a) for _ in range(2)]
    on_b = [await join(b) for _ in range(2)]
    wait_for_subscribers(redis_url, ROOM, 2)  # one listener per process
    count = 50

    async def publish_all(ws: ClientConnection, name: str) -> None:
        for n in range(count):
            await publish(ws, [name, n])

    async def receive(ws: ClientConnection, frames: int) -> list[tuple[str, int]]:
        received = []
        for _ in range(frames):
            sender, n = (await next_message(ws))["data"]
            received.append((sender, n))
        return received

    # One publisher on each process, at the same time.
    await asyncio.gather(publish_all(on_a[0], "a"), publish_all(on_b[0], "b"))
    received = await asyncio.gather(*(receive(ws, 2 * count) for ws in on_a + on_b))
    for frames in received:
        for name in ("a", "b"):
            assert [n for sender, n in frames if sender == name] == list(range(count))
    assert all(frames == received[0] for frames in received), "one order for the whole room"
    # Nothing twice: the next frame every member gets is the one published last.
    await publish(on_b[1], ["end", 0])
    for ws in on_a + on_b:
        assert (await next_message(ws))["data"] == ["end", 0]
    for ws in on_a + on_b:
        await ws.close()


@pytest.mark.anyio
async def test_redis_unreachable_at_startup_is_logged_not_ready_and_retried(
    start_server: StartServer, own_redis: RedisServer
) -> None:
    server = start_server(REDIS_URL=own_redis.url, **FAST_BACKOFF)  # nothing listens there yet
    body = wait_for_readiness(server, 503)
    assert body["checks"]["redis"] is False
    assert f"redis unreachable at {own_redis.url}" in server.output()
    ws = await join(server)
    await publish(ws, "lost")
    error = await next_message(ws)
    assert error["type"] == "error"
    assert error["code"] == "broker_unavailable"

    own_redis.start()
    assert wait_for_readiness(server, 200)["checks"]["redis"] is True
    await publish(ws, "heard")
    assert (await next_message(ws))["data"] == "heard"
    await ws.close()


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_delivery_resumes_after_redis_restarts_under_traffic(
    start_server: StartServer, own_redis: RedisServer
) -> None:
    own_redis.start()
    env = {"REDIS_URL": own_redis.url, **FAST_BACKOFF, **UNLIMITED}
    a = start_server(**env)
    b = start_server(**env)
    sender = await join(a)
    listeners = [await join(a), await join(b)]
    wait_for_subscribers(own_redis.url, ROOM, 2)

    sent: list[int] = []
    replies: list[dict[str, Any]] = []  # the sender's echoes and error frames
    heard: list[list[int]] = [[] for _ in listeners]
    stop = asyncio.Event()

    async def traffic() -> None:
        n = 0
        while not stop.is_set():
            await publish(sender, n)
            sent.append(n)
            n += 1
            await asyncio.sleep(0.02)

    async def read_replies() -> None:
        while True:
            replies.append(await next_message(sender, seconds=60))

    resyncs = [0 for _ in listeners]

    async def listen(ws: ClientConnection, into: list[int], index: int) -> None:
        while True:
            message = await next_message(ws, seconds=60)
            if message["type"] == "resync":  # the restarted Redis has no history to replay
                resyncs[index] += 1
            else:
                into.append(message["data"])

    async def until(condition: Any, what: str, attempts: int = 300) -> None:
        for _ in range(attempts):
            if condition():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting until {what}")

    tasks = [asyncio.create_task(traffic()), asyncio.create_task(read_replies())]
    pairs = enumerate(zip(listeners, heard, strict=True))
    tasks += [asyncio.create_task(listen(ws, into, index)) for index, (ws, into) in pairs]
    try:
        await until(lambda: all(len(into) >= 5 for into in heard), "traffic flows")

        own_redis.kill()
        for server in (a, b):
            body = await asyncio.to_thread(wait_for_readiness, server, 503)
            assert body["checks"]["redis"] is False
        await until(
            lambda: any(reply["type"] == "error" for reply in replies),
            "a publish during the outage gets an error frame",
        )
        # Not sent, or sent when Redis died and never answered: both are outage answers.
        outage_codes = {"broker_unavailable", "publish_outcome_unknown"}
        assert all(reply["code"] in outage_codes for reply in replies if reply["type"] == "error")

        own_redis.start()  # the same port, as after a restart
        for server in (a, b):
            await asyncio.to_thread(wait_for_readiness, server, 200)
        restarted_at = len(sent)
        await until(
            lambda: all(into and into[-1] > restarted_at for into in heard),
            "delivery resumes on both processes",
        )
    finally:
        stop.set()
        await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    echoes = [reply["data"] for reply in replies if reply["type"] == "message"]
    for numbers in [echoes, *heard]:
        assert numbers == sorted(set(numbers)), "each message once, in the order sent"
        assert set(numbers) <= set(sent)
    assert "redis unreachable at" in a.output()
    # Messages published while a process was away are not lost silently: a Redis restarted
    # empty cannot replay them, so every member was told to resync.
    assert all(count >= 1 for count in resyncs), resyncs
    for ws in [sender, *listeners]:
        await ws.close()


@pytest.mark.anyio
async def test_a_redis_that_stops_answering_fails_publishes_instead_of_holding_them(
    own_redis: RedisServer, start_server: StartServer
) -> None:
    own_redis.start()
    server = start_server(
        REDIS_URL=own_redis.url,
        REDIS_PUBLISH_TIMEOUT_SECONDS="0.5",
        REDIS_MAX_PENDING_PUBLISHES="3",
        **FAST_BACKOFF,
        **UNLIMITED,
    )
    ws = await join(server)
    with own_redis.client() as admin:
        # Redis takes connections but runs no command for 10 s (not even an UNPAUSE), as when
        # it is overloaded; the replies below take about a second.
        admin.execute_command("CLIENT", "PAUSE", 10_000, "ALL")
    try:
        for n in range(10):
            await publish(ws, n)
        replies = [await next_message(ws) for _ in range(10)]
    finally:
        await ws.close()
    # Every publish is answered, none silently held: those sent wait out the timeout (their
    # outcome unknown, or not sent if the timeout came first), and once three wait, the next
    # are refused at once (not sent).
    codes = {reply["code"] for reply in replies}
    assert codes <= {"broker_unavailable", "publish_outcome_unknown"}, replies
    assert any("not keeping up" in reply["detail"] for reply in replies), replies
