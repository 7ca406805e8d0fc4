"""Fixtures: the app in-process (TestClient) and the service as a real uvicorn process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from fastapi.testclient import TestClient

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.settings import Settings
{%- if cookiecutter.use_redis %}

from .redis_server import RedisServer
{%- endif %}

PACKAGE = "{{ cookiecutter.package_name }}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings())) as test_client:
        yield test_client


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Server:
    """A `python -m <package>` process on loopback."""

    process: subprocess.Popen[str]
    port: int
    log: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait; kill only if it does not exit in time (and say so)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(
                    f"server ignored SIGTERM for {timeout}s:\n{self.output()}"
                ) from None
        return self.process.returncode


StartServer = Callable[..., Server]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start the service in its own process with settings from environment variables."""
    servers: list[Server] = []

    def start(**environment: str) -> Server:
        port = free_port()
        log = tmp_path / f"server-{port}.log"
        env = os.environ | {"SERVER_HOST": "127.0.0.1", "SERVER_PORT": str(port)} | environment
        with log.open("w") as sink:
            # The working directory is empty, so no stray `.env` changes the settings.
            process = subprocess.Popen(
                [sys.executable, "-m", PACKAGE],
                cwd=tmp_path,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                text=True,
            )
        server = Server(process, port, log)
        servers.append(server)
        wait_until_healthy(server)
        return server

    yield start
    for server in servers:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


def wait_until_healthy(server: Server, attempts: int = 100) -> None:
    for _ in range(attempts):
        if server.process.poll() is not None:
            raise AssertionError(f"server exited at start:\n{server.output()}")
        try:
            if httpx2.get(f"{server.http_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"server not healthy after {attempts} tries:\n{server.output()}")
{%- if cookiecutter.use_redis %}


@pytest.fixture(scope="session", autouse=True)
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Every test, in process or in a server process, publishes through a real Redis:
    REDIS_URL when it is set, otherwise a server started here for the session.

    A channel prefix of its own keeps test runs that share one Redis apart.
    """
    with pytest.MonkeyPatch.context() as env:
        env.setenv("REDIS_CHANNEL_PREFIX", f"test-{os.urandom(4).hex()}:")
        if url := os.environ.get("REDIS_URL"):
            yield url
            return
        server = RedisServer(tmp_path_factory.mktemp("redis"))
        server.start()
        env.setenv("REDIS_URL", server.url)
        try:
            yield server.url
        finally:
            server.kill()
{%- endif %}
