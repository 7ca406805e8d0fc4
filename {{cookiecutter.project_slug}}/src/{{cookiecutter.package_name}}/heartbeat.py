"""Heartbeats: the server pings every client and closes the ones that stopped answering.

One task per process does all of it, however many clients there are: every `interval_seconds`
it first closes each connection from which nothing has arrived for `interval_seconds +
timeout_seconds`, then offers one `{"type":"ping"}` frame, the same for all, to every
connection. Only to connections whose transport says the heartbeat applies to it
(`Transport.heartbeat`): WebSocket clients; an SSE stream cannot answer, and keeps its own
liveness (sse.py). A client answers with `{"type":"pong"}`; any frame it sends counts as an answer,
since the endpoint stamps `Connection.last_seen` on every frame it reads, and on every
protocol-level ping or pong the template's uvicorn protocol reports (`ws_protocol.py`): a client
that keeps its connection alive with WebSocket pings alone (the `websockets` client's default
keepalive) is as alive as one that answers with `pong`.

The contract: a client that answers each ping within `timeout_seconds` is never closed. One that
falls silent is closed with 4000 ("heartbeat timeout") at the first tick after `interval_seconds
+ timeout_seconds` of silence, so between that and `2 * interval_seconds + timeout_seconds`
after its last frame. The pings also keep idle connections alive through proxies, and tell a
client that the server is still there (see `static/client.js`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .feature import Feature
from .hub import Connection, Frame, Hub
from .protocol import Message, Protocol, encode

__all__ = ["HEARTBEAT_TIMEOUT", "Heartbeat", "HeartbeatSettings", "Pong"]

# An application close code (4000-4999 are the application's): the client stopped answering.
HEARTBEAT_TIMEOUT = 4000


class HeartbeatSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HEARTBEAT_", env_file=".env", extra="ignore")

    # Seconds between pings. Keep it below the idle timeout of every proxy and load balancer
    # between clients and the service, or they drop idle connections first.
    interval_seconds: float = Field(default=20.0, gt=0)
    # Seconds a client has to answer a ping before it counts as gone.
    timeout_seconds: float = Field(default=20.0, gt=0)


class Pong(Message):
    """A client's answer to a ping; reading it has already refreshed `last_seen`."""

    type: Literal["pong"]


class Heartbeat(Feature):
    """The one ping-and-sweep task of this process."""

    name = "heartbeats"

    def __init__(self, hub: Hub, settings: HeartbeatSettings) -> None:
        self.hub = hub
        self.settings = settings
        self._task: asyncio.Task[None] | None = None
        self._ping = Frame(encode({"type": "ping"}), type="ping")

    def welcome(self) -> dict[str, object]:
        """Fields for the `welcome` frame, so a client knows how often to expect a ping."""
        return {
            "heartbeat": {
                "interval": self.settings.interval_seconds,
                "timeout": self.settings.timeout_seconds,
            }
        }

    def register(self, protocol: Protocol) -> None:
        protocol.on("pong", Pong, self.pong)

    async def pong(self, connection: Connection, message: Pong) -> None:
        return None

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"Expected a stopped heartbeat, got {self._task!r}")
        self._task = asyncio.create_task(self._run(), name="heartbeat")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def tick(self, now: float) -> int:
        """Close the silent connections, ping the rest; return how many were closed."""
        deadline = now - (self.settings.interval_seconds + self.settings.timeout_seconds)
        closed = 0
        for connection in self.hub:
            if not connection.transport.heartbeat:
                continue
            if connection.last_seen < deadline:
                connection.close(HEARTBEAT_TIMEOUT, "heartbeat timeout")
                closed += 1
            else:
                connection.offer(self._ping)
        return closed

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.interval_seconds)
            self.tick(loop.time())
