"""Query-token authentication: every bad token refused at the handshake, a good one let in,
expiry closing an open connection, tokens kept out of the logs, and the `token` command."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from starlette.testclient import WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from {{ cookiecutter.package_name }}.__main__ import main
from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.auth_token import TokenSettings, issue_token, verify_token
from {{ cookiecutter.package_name }}.hub import Hub
from {{ cookiecutter.package_name }}.identity import SESSION_EXPIRED
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import PACKAGE, TEST_SECRET, StartServer
from .messages import receive

pytestmark = pytest.mark.real_auth

# Explicit, so that a developer's .env cannot change what these tests mean.
SETTINGS = TokenSettings(
    secret=TEST_SECRET,
    environment="development",
    issuer="tests",
    audience="chat",
    dev_endpoints=False,
)


def app_client(settings: TokenSettings = SETTINGS) -> TestClient:
    return TestClient(create_app(Settings(auth=settings)))


@pytest.fixture
def client() -> Iterator[TestClient]:
    with app_client() as test_client:
        yield test_client


def token(user: str = "alice", ttl: float = 60, *, now: float | None = None, **changes: Any) -> str:
    """A token signed as SETTINGS would sign it, but for the settings changed here."""
    settings = TokenSettings(
        **{"secret": TEST_SECRET, "issuer": "tests", "audience": "chat"} | changes
    )
    return issue_token(user, ttl, settings, now=now)


def refused(client: TestClient, path: str) -> WebSocketDenialResponse:
    with pytest.raises(WebSocketDenialResponse) as denial:
        client.websocket_connect(path).__enter__()
    hub: Hub = client.app.state.hub  # type: ignore[attr-defined]
    assert len(hub) == 0, "nothing may be accepted"
    return denial.value


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        pytest.param("/ws", "missing token", id="missing"),
        pytest.param("/ws?token=", "missing token", id="empty"),
        pytest.param("/ws?token=not.a.jwt", "invalid token", id="malformed"),
        pytest.param(
            f"/ws?token={token(secret='another-secret-' + 'y' * 40)}",
            "invalid token",
            id="wrongly-signed",
        ),
        pytest.param(
            f"/ws?token={token(ttl=60, now=time.time() - 3600)}", "token expired", id="expired"
        ),
        pytest.param(
            f"/ws?token={token(now=time.time() + 600)}", "token not yet valid", id="not-yet-valid"
        ),
        pytest.param(
            f"/ws?token={token(audience='billing')}",
            "token not meant for this service",
            id="wrong-audience",
        ),
        pytest.param(
            f"/ws?token={token(issuer='elsewhere')}",
            "token not meant for this service",
            id="wrong-issuer",
        ),
        pytest.param(
            "/ws?token=" + jwt.encode({"sub": "mallory"}, TEST_SECRET, algorithm="HS256"),
            "invalid token",
            id="no-expiry",
        ),
        pytest.param(
            "/ws?token=" + jwt.encode({"sub": "mallory", "exp": 2**40}, "", algorithm="none"),
            "invalid token",
            id="unsigned",
        ),
    ],
)
def test_a_bad_token_is_refused_with_401_before_accept(
    client: TestClient, path: str, detail: str
) -> None:
    denial = refused(client, path)
    assert denial.status_code == 401
    assert denial.text == detail


def test_a_valid_token_is_accepted_and_messages_carry_its_user(client: TestClient) -> None:
    with client.websocket_connect(f"/ws?token={token('alice')}") as ws:
        welcome = receive(ws)
        assert welcome["type"] == "welcome"
        assert welcome["user"] == "alice"
        ws.send_json({"type": "publish", "data": "hi"})
        message = receive(ws)
        assert message["sender"] == "alice"


def test_an_open_connection_is_closed_with_4001_when_its_token_expires(
    client: TestClient,
) -> None:
    with client.websocket_connect(f"/ws?token={token(ttl=2)}") as ws:
        assert receive(ws)["type"] == "welcome"
        started = time.monotonic()
        with pytest.raises(WebSocketDisconnect) as closed:
            receive(ws)
        assert closed.value.code == SESSION_EXPIRED
        assert time.monotonic() - started < 5
    hub: Hub = client.app.state.hub  # type: ignore[attr-defined]
    assert len(hub) == 0


def test_a_token_with_a_stray_character_is_invalid_whatever_the_character() -> None:
    valid = token("bob", ttl=60)
    for stray in ("\u00e9", "\u00ff", "\ud800", "\U0001f600", "\x00"):
        for bad in (valid + stray, stray + valid, stray):
            with pytest.raises(jwt.InvalidTokenError):
                verify_token(bad, SETTINGS)


def test_a_signed_subject_no_frame_can_name_is_refused() -> None:
    # Signed, so only a backend could issue it: one that passed a user's name on unchecked.
    lone_surrogate = token("\ud800", ttl=60)
    with pytest.raises(jwt.InvalidTokenError, match="UTF-8"):
        verify_token(lone_surrogate, SETTINGS)
    accented = "b\u00f6b \U0001f600"
    assert verify_token(token(accented, ttl=60), SETTINGS).user == accented


def test_verify_token_returns_the_user_and_expiry() -> None:
    identity = verify_token(token("bob", ttl=60), SETTINGS)
    assert identity.user == "bob"
    assert identity.expires_at is not None
    assert 55 < identity.expires_at - time.time() <= 60


def test_the_dev_endpoint_is_off_by_default(client: TestClient) -> None:
    assert client.post("/auth/dev-token", json={"user": "alice"}).status_code == 404


def test_the_dev_endpoint_issues_tokens_the_handshake_accepts_when_turned_on() -> None:
    settings = SETTINGS.model_copy(update={"dev_endpoints": True, "max_ttl_seconds": 120})
    with app_client(settings) as client:
        response = client.post("/auth/dev-token", json={"user": "carol", "ttl_seconds": 9999})
        assert response.status_code == 200
        assert response.json()["ttl_seconds"] == 120, "capped at AUTH_MAX_TTL_SECONDS"
        with client.websocket_connect(f"/ws?token={response.json()['token']}") as ws:
            assert receive(ws)["user"] == "carol"
        assert client.post("/auth/dev-token", json={"user": "no spaces"}).status_code == 422


def test_production_refuses_a_missing_or_short_secret() -> None:
    with pytest.raises(ValidationError, match="AUTH_SECRET"):
        TokenSettings(secret="", environment="production")
    with pytest.raises(ValidationError, match="AUTH_SECRET"):
        TokenSettings(secret="short", environment="production")
    with pytest.raises(ValidationError, match="AUTH_DEV_ENDPOINTS"):
        TokenSettings(secret=TEST_SECRET, environment="production", dev_endpoints=True)


def test_the_service_refuses_to_start_in_production_without_a_secret(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if name != "AUTH_SECRET"}
    result = subprocess.run(
        [sys.executable, "-m", PACKAGE],
        cwd=tmp_path,  # no .env here
        env=env | {"AUTH_ENVIRONMENT": "production"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "AUTH_SECRET must be set" in result.stderr


def test_the_token_command_prints_a_token_the_service_accepts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUTH_SECRET", TEST_SECRET)
    assert main(["token", "dave", "--ttl", "30"]) == 0
    printed = capsys.readouterr().out.strip()
    identity = verify_token(printed, TokenSettings(secret=TEST_SECRET))
    assert identity.user == "dave"
    assert identity.expires_at is not None
    assert 25 < identity.expires_at - time.time() <= 30


def test_the_token_command_refuses_without_a_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AUTH_SECRET", raising=False)
    assert main(["token", "dave"]) == 2
    assert "AUTH_SECRET" in capsys.readouterr().err


@pytest.mark.anyio
async def test_no_token_reaches_the_server_log(start_server: StartServer) -> None:
    server = start_server(SERVER_LOG_LEVEL="debug")
    good = server.ws_path.partition("token=")[2]
    bad = token("eve", secret="another-secret-" + "z" * 40)
    async with connect(server.ws_url) as ws:
        assert "welcome" in await asyncio.wait_for(ws.recv(), timeout=10)
    with pytest.raises(InvalidStatus) as denial:
        await connect(f"ws://127.0.0.1:{server.port}/ws?token={bad}")
    assert denial.value.response.status_code == 401
    httpx2.get(f"{server.http_url}/healthz?token={good}", timeout=5)
    server.stop()

    log = server.output()
    assert '"WebSocket /ws?[redacted]" [accepted]' in log
    assert '"WebSocket /ws?[redacted]" 401' in log
    assert "without completing handshake" not in log, "a refusal is not a server error"
    assert "/healthz?[redacted]" in log
    for secret_part in (good, bad, good.split(".")[2], bad.split(".")[2]):
        assert secret_part not in log
