"""Presence across processes through a real Redis: two servers see each other's members, and a
process killed with SIGKILL leaves no ghosts once its entries expire."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from {{ cookiecutter.package_name }}.protocol import DEFAULT_ROOM

from .conftest import Server, StartServer{% if cookiecutter.auth != "none" %}, connect_as{% endif %}
from .messages import next_message
from .redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

# Short, so that the test waits little for a dead process's entries to expire (3x this).
REFRESH_SECONDS = 0.5
FAST = {"PRESENCE_REFRESH_SECONDS": str(REFRESH_SECONDS), "PRESENCE_EVENTS": "true"}


async def presence(server: Server) -> dict[str, Any]:
    async with server.http_client(timeout=10) as http:
        response = await http.get("/presence", params={"room": DEFAULT_ROOM})
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer


async def connections(server: Server) -> int:
    answer = await presence(server)
    return sum(entry["connections"] for entry in answer["users"])


async def until_connections(server: Server, expected: int, *, bound_seconds: float) -> None:
    """Poll until the server counts `expected` connections; fail past the bound."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_seconds
    while (seen := await connections(server)) != expected:
        assert loop.time() < deadline, f"{seen} connections, not {expected}, after the bound"
        await asyncio.sleep(0.05)


async def test_two_processes_count_each_others_members(start_server: StartServer) -> None:
    first, second = start_server(**FAST), start_server(**FAST)
    async with first.connect() as on_first, second.connect() as on_second:
        welcomes = [await next_message(on_first), await next_message(on_second)]
        # The second process writes its counts as they change: no refresh is waited for.
        await until_connections(first, 2, bound_seconds=10)
        await until_connections(second, 2, bound_seconds=10)
        answer = await presence(first)
{%- if cookiecutter.auth == "none" %}
        # Each process numbers its connections; the process's tag keeps them apart.
        users = [entry["user"] for entry in answer["users"]]
        assert len(set(users)) == 2, users
        assert {user.partition("@")[0] for user in users} == {
            welcome["connection"] for welcome in welcomes
        }
{%- else %}
        # One user with a tab on each process.
        assert answer["users"] == [{"user": welcomes[0]["user"], "connections": 2}]
{%- endif %}
        await on_second.close()
        await until_connections(first, 1, bound_seconds=10)


async def until(read: Callable[[], Awaitable[int]], expected: int, *, bound_seconds: float) -> None:
    """Poll `read` until it gives `expected`; fail past the bound."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_seconds
    while (seen := await read()) != expected:
        assert loop.time() < deadline, f"{seen}, not {expected}, after the bound"
        await asyncio.sleep(0.05)


async def test_a_killed_process_leaves_no_ghosts(
    start_server: StartServer, redis_url: str, redis_prefix: str
) -> None:
    survivor, doomed = start_server(**FAST), start_server(**FAST)
    async with survivor.connect() as ws:
        await next_message(ws)
        ghosts = [await doomed.connect() for _ in range(3)]
        for ghost in ghosts:
            await next_message(ghost)
        await until_connections(survivor, 4, bound_seconds=10)
        doomed.process.send_signal(signal.SIGKILL)
        doomed.process.wait()
        # Documented: gone from every answer within 3 * PRESENCE_REFRESH_SECONDS of the
        # dead process's last write; the bound leaves room for a loaded machine.
        await until_connections(survivor, 1, bound_seconds=3 * REFRESH_SECONDS + 10)
        for ghost in ghosts:
            await ghost.close()  # already closed by the dead peer's kernel: at once
        # In Redis too: the survivor's next write deletes the dead process's entry...
        entries = f"{redis_prefix}{DEFAULT_ROOM}:presence"  # presence_redis.py's two keys
        expiries = f"{entries}:alive"
        async with Redis.from_url(redis_url, decode_responses=True) as redis:
            await until(lambda: redis.hlen(entries), 1, bound_seconds=3 * REFRESH_SECONDS + 10)
            assert await redis.zcard(expiries) == 1
            # ...and once no process is left to write, both keys expire.
            survivor.process.send_signal(signal.SIGKILL)
            survivor.process.wait()
            await until(
                lambda: redis.exists(entries, expiries), 0, bound_seconds=3 * REFRESH_SECONDS + 10
            )


async def test_presence_is_unavailable_while_redis_is_down(
    start_server: StartServer, tmp_path: Path
) -> None:
    (tmp_path / "redis").mkdir()
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        server = start_server(REDIS_URL=redis.url, **FAST)
        async with server.connect() as ws, server.http_client(timeout=10) as http:
            await next_message(ws)
            redis.kill()
            await ws.send(json.dumps({"type": "presence", "room": DEFAULT_ROOM}))
            while (answer := await next_message(ws))["type"] not in ("presence", "error"):
                pass  # a resync, say
            assert answer.get("code") == "presence_unavailable", answer
            response = await http.get("/presence", params={"room": DEFAULT_ROOM})
            assert response.status_code == 503, response.text
            assert "presence_unavailable" in response.json()["detail"]
    finally:
        redis.kill()


{%- if cookiecutter.auth != "none" %}


async def test_events_are_coalesced_across_processes(start_server: StartServer) -> None:
    first, second = start_server(**FAST), start_server(**FAST)
    async with connect_as(first, "watcher") as watcher, first.connect() as tab_on_first:
        await next_message(watcher)
        await next_message(tab_on_first)
        await until_connections(second, 2, bound_seconds=10)  # second sees tester on first
        async with second.connect() as tab_on_second:
            await next_message(tab_on_second)  # joins nobody: tester is on first already
            await until_connections(first, 3, bound_seconds=10)
        # Leaves nobody: tester is still on first. Once first sees it gone from second,
        # closing the last tab is tester's one leave.
        await until_connections(first, 2, bound_seconds=10)
        await tab_on_first.close()
        events: list[dict[str, Any]] = []
        while not events or events[-1]["type"] != "presence_leave":
            message = await next_message(watcher)
            message.pop("id", None)  # an event id, with a history
            if message["type"].startswith("presence_") and message["user"] == "tester":
                events.append(message)
    assert events == [
        {"type": "presence_join", "room": DEFAULT_ROOM, "user": "tester"},
        {"type": "presence_leave", "room": DEFAULT_ROOM, "user": "tester"},
    ]
{%- endif %}
