"""Fixtures: the app in-process (TestClient) and the service as a real uvicorn process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fastapi.testclient import TestClient
from websockets.asyncio.client import connect

from {{ cookiecutter.package_name }}.app import create_app
{%- if cookiecutter.auth == "query_token" %}
from {{ cookiecutter.package_name }}.auth_token import TokenAuth, TokenSettings, issue_token
{%- elif cookiecutter.auth == "cookie" %}
from {{ cookiecutter.package_name }}.auth_cookie import CookieAuth, SessionSigner
{%- endif %}
{%- if cookiecutter.auth != "none" %}
from {{ cookiecutter.package_name }}.identity import anonymous
{%- endif %}
from {{ cookiecutter.package_name }}.settings import Settings
{%- if cookiecutter.use_redis %}

from .redis_server import HeldProxy, RedisServer
{%- endif %}

PACKAGE = "{{ cookiecutter.package_name }}"
{%- if cookiecutter.auth != "none" %}
# The signing secret of the servers the tests start; test_auth_*.py use it too.
TEST_SECRET = "test-secret-" + "x" * 40


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_auth: keep the handshake's authentication on")


@pytest.fixture(autouse=True)
def anonymous_in_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process apps let everyone in as `anonymous`, except in tests marked `real_auth`: the
    other tests are about the protocol, and test_auth_*.py test the handshake's check itself.
    Servers started with `start_server` always check, and `Server` carries the credentials."""
    if request.node.get_closest_marker("real_auth") is None:
{%- if cookiecutter.auth == "query_token" %}
        monkeypatch.setattr(TokenAuth, "identify", lambda self, websocket: anonymous(websocket))
{%- elif cookiecutter.auth == "cookie" %}
        monkeypatch.setattr(CookieAuth, "identify", lambda self, websocket: anonymous(websocket))
{%- endif %}
{%- endif %}


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


def ws_client(url: str, **options: Any) -> connect:
    """A WebSocket client that queues every frame it has not read yet. With a bounded queue
    (websockets' default: 16 frames) the client stops reading its socket once the queue is
    full, so it never sees the server's close frame: closing a client that had not read all
    it was sent then waits out its `close_timeout` (10 s) and ends with 1006. The tests'
    stalled readers are raw sockets (test_server.stalled_client), never this."""
    return connect(url, **({"max_queue": None} | options))


@dataclass
class Server:
    """A `python -m <package>` process on loopback."""

    process: subprocess.Popen[str]
    port: int
    log: Path
    # The credentials a client presents at the handshake, when the service checks them.
    ws_path: str = "/ws"
    ws_headers: dict[str, str] = field(default_factory=dict)
    # The same credentials for the HTTP routes.
    http_params: dict[str, str] = field(default_factory=dict)
    http_headers: dict[str, str] = field(default_factory=dict)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.ws_path}"

    def connect(self, **options: Any) -> connect:
        """A WebSocket client of this server that presents the test user's credentials."""
        return ws_client(self.ws_url, additional_headers=self.ws_headers, **options)

    def http_client(self, **options: Any) -> httpx2.AsyncClient:
        """An HTTP client of this server that presents the test user's credentials."""
        return httpx2.AsyncClient(
            base_url=self.http_url, params=self.http_params, headers=self.http_headers, **options
        )

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

    def start(*command: str, **environment: str) -> Server:
        """`command`: the arguments of `python`, `-m <package>` unless given (uvicorn's command
        line reads the host and port from UVICORN_HOST and UVICORN_PORT)."""
        port = free_port()
        log = tmp_path / f"server-{port}.log"
        address = {"HOST": "127.0.0.1", "PORT": str(port)}
        env = os.environ | {f"SERVER_{key}": value for key, value in address.items()}
        env |= {f"UVICORN_{key}": value for key, value in address.items()} | environment
{%- if cookiecutter.auth != "none" %}
        env = {"AUTH_SECRET": TEST_SECRET} | env
{%- endif %}
        with log.open("w") as sink:
            # The working directory is empty, so no stray `.env` changes the settings.
            process = subprocess.Popen(
                [sys.executable, *(command or ("-m", PACKAGE))],
                cwd=tmp_path,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                text=True,
            )
        server = Server(process, port, log)
{%- if cookiecutter.auth != "none" %}
        sign_in(server, env["AUTH_SECRET"], seconds=3600)
{%- endif %}
        servers.append(server)
        wait_until_healthy(server)
        return server

    yield start
    for server in servers:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


{%- if cookiecutter.auth != "none" %}


def sign_in(server: Server, secret: str, *, seconds: int) -> None:
    """Give the server's clients the test user's credentials, valid for `seconds`."""
{%- if cookiecutter.auth == "query_token" %}
    token = issue_token("tester", seconds, TokenSettings(secret=secret))
    server.ws_path = f"/ws?token={token}"
    server.http_params = {"token": token}
{%- elif cookiecutter.auth == "cookie" %}
    session = SessionSigner(secret).sign("tester", time.time() + seconds)
    server.ws_headers = {"Origin": server.http_url, "Cookie": f"session={session}"}
    server.http_headers = server.ws_headers
{%- endif %}
{%- endif %}


{%- if cookiecutter.auth != "none" %}


def connect_as(server: Server, user: str) -> connect:
    """A WebSocket client of another user than the test's own (`tester`)."""
{%- if cookiecutter.auth == "query_token" %}
    token = issue_token(user, 3600, TokenSettings(secret=TEST_SECRET))
    return ws_client(f"ws://127.0.0.1:{server.port}/ws?token={token}")
{%- else %}
    session = SessionSigner(TEST_SECRET).sign(user, time.time() + 3600)
    headers = {"Origin": server.http_url, "Cookie": f"session={session}"}
    return ws_client(f"ws://127.0.0.1:{server.port}/ws", additional_headers=headers)
{%- endif %}
{%- endif %}


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
    REDIS_URL when it is set, otherwise a server started here for the session."""
    with pytest.MonkeyPatch.context() as env:
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


@pytest.fixture(autouse=True)
def redis_prefix(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A channel and key prefix of each test's own, for its apps and its servers alike.

    The session's Redis outlives each test's apps: a server that the test leaves running is
    killed at teardown, and its presence entries stay counted until they expire (seconds), as
    a dead process's must, and rooms' histories stay too. Under one prefix for the session,
    the next test would count them. Test runs that share a REDIS_URL stay apart too.
    """
    prefix = f"test-{os.urandom(4).hex()}:"
    monkeypatch.setenv("REDIS_CHANNEL_PREFIX", prefix)
    return prefix


@pytest.fixture
def running_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test's own, started, which it may stop, kill and start again."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def held_proxy(running_redis: RedisServer) -> Iterator[HeldProxy]:
    """A proxy to `running_redis` that the test can hold, for one process to go through."""
    proxy = HeldProxy(running_redis.port)
    proxy.start()
    yield proxy
    proxy.stop()
{%- endif %}
