"""SSE streams through Redis faults, with real processes: a process cut off from Redis while
another publishes, and the first resume after Redis restarts."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from .conftest import StartServer
from .redis_server import HeldProxy, RedisServer
from .test_redis_broker import FAST_BACKOFF, UNLIMITED, wait_for_readiness
from .test_sse import ROOM, Stream, open_stream, post

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(120)]


async def events_until(stream: Stream, last: object) -> list[tuple[str, dict[str, Any]]]:
    """(event name, frame) of every event but pings, up to the message whose data is `last`."""
    events = []
    while True:
        event = await stream.next()
        if not event.data:
            continue
        frame: dict[str, Any] = json.loads(event.data)
        events.append((event.event, frame))
        if event.event == "message" and frame["data"] == last:
            return events


async def test_a_stream_on_a_process_cut_off_from_redis_misses_nothing(
    start_server: StartServer, running_redis: RedisServer, held_proxy: HeldProxy
) -> None:
    publisher = start_server(REDIS_URL=running_redis.url, **FAST_BACKOFF, **UNLIMITED)
    cut_off = start_server(REDIS_URL=held_proxy.url, **FAST_BACKOFF)
    async with open_stream(cut_off) as stream, publisher.http_client(timeout=10) as client:
        await post(publisher, 0, client=client)
        _, first = await stream.next_message()
        assert first["data"] == 0

        held_proxy.hold()  # this process hears nothing; the publisher's Redis carries on
        try:
            await asyncio.to_thread(wait_for_readiness, cut_off, 503, 400)
            missed = [await post(publisher, n, client=client) for n in range(1, 11)]
        finally:
            held_proxy.release()
        await asyncio.to_thread(wait_for_readiness, cut_off, 200, 400)
        live = [await post(publisher, n, client=client) for n in range(11, 16)]
        events = await events_until(stream, 15)

    # Every message once, in order, the missed ones (from the history) before the live ones.
    assert [name for name, _ in events] == ["message"] * 15, events
    assert [frame["data"] for _, frame in events] == list(range(1, 16))
    assert [frame["id"] for _, frame in events] == missed + live


async def test_a_quiet_room_on_a_process_cut_off_from_redis_misses_nothing_either(
    start_server: StartServer, running_redis: RedisServer, held_proxy: HeldProxy
) -> None:
    """Nothing was delivered in the room here before the outage: the gap starts where the
    room's history stood when this process began to listen."""
    publisher = start_server(REDIS_URL=running_redis.url, **FAST_BACKOFF, **UNLIMITED)
    cut_off = start_server(REDIS_URL=held_proxy.url, **FAST_BACKOFF)
    async with publisher.http_client(timeout=10) as client:
        await post(publisher, "before", client=client)  # in the history, not owed to anyone
        async with open_stream(cut_off) as stream:
            # Subscribed; give the process its one history read (where the room stands), with
            # room to spare on a loaded machine: read after the outage began, it would find the
            # outage's messages already there, and the stream would get a resync instead.
            await asyncio.sleep(3)
            held_proxy.hold()
            try:
                await asyncio.to_thread(wait_for_readiness, cut_off, 503, 400)
                for n in range(5):
                    await post(publisher, n, client=client)
            finally:
                held_proxy.release()
            await asyncio.to_thread(wait_for_readiness, cut_off, 200, 400)
            await post(publisher, 5, client=client)
            events = await events_until(stream, 5)
    assert [(name, frame.get("data")) for name, frame in events] == [
        ("message", n) for n in range(6)
    ], events


async def test_the_first_resume_after_redis_restarts_ends_in_an_event(
    start_server: StartServer, running_redis: RedisServer
) -> None:
    server = start_server(REDIS_URL=running_redis.url, **FAST_BACKOFF)
    async with open_stream(server) as stream:
        await post(server, 0)
        cursor, _ = await stream.next_message()
    await post(server, 1)
    # A resume, so that the history's connection is open (and goes stale in the restart).
    async with open_stream(server, last_event_id=cursor) as stream:
        cursor, frame = await stream.next_message()
        assert frame["data"] == 1

    running_redis.kill()
    await asyncio.to_thread(wait_for_readiness, server, 503, 400)
    running_redis.start()  # empty: the history is gone with the old server
    await asyncio.to_thread(wait_for_readiness, server, 200, 400)

    async with open_stream(server, last_event_id=cursor) as stream:
        event = await stream.next()
        assert event.event == "resync", event  # not an end with no event at all
        assert json.loads(event.data)["rooms"] == [ROOM]
        await post(server, 2)
        _, frame = await stream.next_message()
        assert frame["data"] == 2
