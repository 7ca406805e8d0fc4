"""Cookie authentication: a foreign Origin and every bad cookie refused at the handshake, a
good session let in, expiry closing an open connection, and the login and logout endpoints."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi import Response
from fastapi.testclient import TestClient
from pydantic import ValidationError
from starlette.testclient import WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.auth_cookie import (
    CookieAuth,
    CookieSettings,
    InvalidSession,
    SessionSigner,
)
from {{ cookiecutter.package_name }}.hub import Hub
from {{ cookiecutter.package_name }}.identity import SESSION_EXPIRED
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import TEST_SECRET
from .messages import receive

pytestmark = pytest.mark.real_auth

# TestClient's requests go to http://testserver, so that is the service's own origin.
OWN_ORIGIN = "http://testserver"
LISTED_ORIGIN = "https://app.example.com"
# Explicit, so that a developer's .env cannot change what these tests mean.
SETTINGS = CookieSettings(
    secret=TEST_SECRET,
    environment="development",
    cookie_name="session",
    allowed_origins=[LISTED_ORIGIN],
    allow_same_origin=True,
    dev_endpoints=False,
)
SIGNER = SessionSigner(TEST_SECRET)


def app_client(settings: CookieSettings = SETTINGS) -> TestClient:
    return TestClient(create_app(Settings(auth=settings)))


@pytest.fixture
def client() -> Iterator[TestClient]:
    with app_client() as test_client:
        yield test_client


def session(user: str = "alice", seconds: float = 60, signer: SessionSigner = SIGNER) -> str:
    return signer.sign(user, time.time() + seconds)


def headers(cookie: str | None, origin: str | None = OWN_ORIGIN) -> dict[str, str]:
    found = {}
    if origin is not None:
        found["origin"] = origin
    if cookie is not None:
        found["cookie"] = f"session={cookie}"
    return found


def tampered(value: str) -> str:
    """The same cookie claiming another user, with the original signature."""
    payload, _, signature = value.partition(".")
    other = SIGNER.sign("mallory", time.time() + 60).partition(".")[0]
    assert other != payload
    return f"{other}.{signature}"


@pytest.mark.parametrize(
    ("request_headers", "status_code"),
    [
        pytest.param(headers(session(), origin="https://evil.example"), 403, id="foreign-origin"),
        pytest.param(headers(session(), origin="http://testserver.evil"), 403, id="lookalike"),
        pytest.param(headers(session(), origin=None), 403, id="no-origin"),
        pytest.param(headers(session(), origin="http://["), 403, id="origin-not-a-url"),
        pytest.param(headers(None), 401, id="no-cookie"),
        pytest.param(headers(tampered(session())), 401, id="tampered"),
        pytest.param(headers("garbage"), 401, id="malformed"),
        pytest.param(
            headers(session(signer=SessionSigner("another-secret-" + "y" * 40))),
            401,
            id="wrongly-signed",
        ),
        pytest.param(headers(session(seconds=-1)), 401, id="expired"),
    ],
)
def test_a_bad_handshake_is_refused_before_accept(
    client: TestClient, request_headers: dict[str, str], status_code: int
) -> None:
    with pytest.raises(WebSocketDenialResponse) as denial:
        client.websocket_connect("/ws", headers=request_headers).__enter__()
    assert denial.value.status_code == status_code
    hub: Hub = client.app.state.hub  # type: ignore[attr-defined]
    assert len(hub) == 0, "nothing may be accepted"


@pytest.mark.parametrize("origin", [OWN_ORIGIN, LISTED_ORIGIN])
def test_a_valid_session_from_an_allowed_origin_is_accepted(
    client: TestClient, origin: str
) -> None:
    with client.websocket_connect("/ws", headers=headers(session("alice"), origin)) as ws:
        welcome = receive(ws)
        assert welcome["user"] == "alice"
        ws.send_json({"type": "publish", "data": "hi"})
        assert receive(ws)["sender"] == "alice"


def test_the_own_origin_can_be_refused_too() -> None:
    settings = SETTINGS.model_copy(update={"allow_same_origin": False})
    with app_client(settings) as client, pytest.raises(WebSocketDenialResponse) as denial:
        client.websocket_connect("/ws", headers=headers(session())).__enter__()
    assert denial.value.status_code == 403


def test_an_open_connection_is_closed_with_4001_when_its_session_expires(
    client: TestClient,
) -> None:
    with client.websocket_connect("/ws", headers=headers(session(seconds=2))) as ws:
        assert receive(ws)["type"] == "welcome"
        started = time.monotonic()
        with pytest.raises(WebSocketDisconnect) as closed:
            receive(ws)
        assert closed.value.code == SESSION_EXPIRED
        assert time.monotonic() - started < 5


def test_login_is_off_by_default(client: TestClient) -> None:
    assert client.post("/auth/login", json={"user": "alice"}).status_code == 404


def test_login_sets_a_cookie_the_handshake_accepts_and_logout_clears_it() -> None:
    settings = SETTINGS.model_copy(update={"dev_endpoints": True})
    with app_client(settings) as client:
        response = client.post("/auth/login", json={"user": "carol"})
        assert response.status_code == 200
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie
        assert "samesite=lax" in cookie
        assert "secure" not in cookie, "plain http in development"
        # The client keeps the cookie, as a browser would.
        with client.websocket_connect("/ws", headers={"origin": OWN_ORIGIN}) as ws:
            assert receive(ws)["user"] == "carol"

        assert client.post("/auth/logout").status_code == 204
        assert "session" not in client.cookies
        with pytest.raises(WebSocketDenialResponse) as denial:
            client.websocket_connect("/ws", headers={"origin": OWN_ORIGIN}).__enter__()
        assert denial.value.status_code == 401
        assert client.post("/auth/login", json={"user": "no spaces"}).status_code == 422


def test_the_cookie_is_secure_outside_development() -> None:
    auth = CookieAuth(CookieSettings(secret=TEST_SECRET, environment="production"))
    response = Response()
    auth.login(response, "erin")
    cookie = response.headers["set-cookie"].lower()
    assert "secure" in cookie
    assert "httponly" in cookie


def test_production_refuses_a_missing_or_short_secret() -> None:
    with pytest.raises(ValidationError, match="AUTH_SECRET"):
        CookieSettings(secret="", environment="production")
    with pytest.raises(ValidationError, match="AUTH_DEV_ENDPOINTS"):
        CookieSettings(secret=TEST_SECRET, environment="production", dev_endpoints=True)


def test_a_session_with_a_non_ascii_character_is_malformed_not_a_server_error() -> None:
    # A header is read as latin-1, so a client can append any character up to U+00FF.
    for stray in ("\u00e9", "\u00ff", "\u0100", "\U0001f600"):
        with pytest.raises(InvalidSession, match="malformed"):
            SIGNER.verify(session() + stray)
        with pytest.raises(InvalidSession, match="malformed"):
            SIGNER.verify(stray + session())


def test_a_signed_session_round_trips_and_a_flipped_byte_does_not() -> None:
    value = session("dave", seconds=60)
    assert SIGNER.verify(value).user == "dave"
    flipped = value[:-1] + ("A" if value[-1] != "A" else "B")
    with pytest.raises(InvalidSession, match="signature"):
        SIGNER.verify(flipped)
