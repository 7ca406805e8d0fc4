"""Cookie authentication: a signed session cookie, and an Origin allowlist, at the handshake.

A browser sends its cookies with a WebSocket upgrade request from any site, and Starlette's
CORSMiddleware does not look at WebSocket requests, so a session cookie alone would let any web
page open a socket as the logged-in user (cross-site WebSocket hijacking). Every handshake is
therefore checked, before accept, in this order:

1. Origin: it must be in `AUTH_ALLOWED_ORIGINS`, or be this service's own origin (its host and
   port equal the request's Host) while `AUTH_ALLOW_SAME_ORIGIN=true`; otherwise HTTP 403.
2. The session cookie: present, signed with `AUTH_SECRET` (HMAC-SHA256) and not expired;
   otherwise HTTP 401.

The cookie is HttpOnly, SameSite=Lax, and Secure outside development. A connection is closed
with 4001 when its session expires. A session may carry `rooms` and `publish`, lists of room
names or patterns (permissions.py): the rooms it may join and publish to; without them, every
room. `POST /auth/login` (development only: it believes any user
name, and exists only while `AUTH_DEV_ENDPOINTS=true`) sets the cookie; `POST /auth/logout`
clears it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import time
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette import status
from starlette.requests import HTTPConnection

from .feature import IdentityFeature
from .identity import HandshakeRefused, Identity
from .permissions import MAX_PATTERN_LENGTH, MAX_PATTERNS, grants_from_claims

__all__ = ["CookieAuth", "CookieSettings", "InvalidSession", "LoginRequest", "SessionSigner"]

logger = logging.getLogger(__name__)

# Shorter secrets are refused in production: the HMAC key should hold at least 256 bits.
MIN_SECRET_LENGTH = 32
USER_PATTERN = r"^[A-Za-z0-9_.@-]{1,64}$"


class CookieSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUTH_", env_file=".env", extra="ignore")

    # The HMAC key cookies are signed with. Generation wrote a random one into `.env`; in
    # development, none at all means a random key per process (sessions die with it).
    secret: SecretStr = SecretStr("")
    # production: refuse to start without a strong secret; Secure cookies; no dev endpoints.
    environment: Literal["development", "production"] = "development"
    cookie_name: str = "session"
    # How long a session lasts after login; its connections are closed with 4001 then.
    session_seconds: int = Field(default=8 * 3600, ge=1)
    # Origins (`https://app.example.com`, scheme and host and port) allowed to open sockets,
    # as a JSON list in the environment: AUTH_ALLOWED_ORIGINS='["https://app.example.com"]'.
    allowed_origins: list[str] = Field(default_factory=list)
    # Also allow the service's own origin: the page it serves (the demo) may connect.
    allow_same_origin: bool = True
    # `POST /auth/login` logs in anyone under any name: for development and the demo only.
    dev_endpoints: bool = False

    @model_validator(mode="after")
    def _production_needs_a_secret(self) -> Self:
        if self.environment == "production":
            if len(self.secret.get_secret_value()) < MIN_SECRET_LENGTH:
                raise ValueError(
                    f"AUTH_SECRET must be set, at least {MIN_SECRET_LENGTH} characters, "
                    "when AUTH_ENVIRONMENT=production"
                )
            if self.dev_endpoints:
                raise ValueError("AUTH_DEV_ENDPOINTS must be off when AUTH_ENVIRONMENT=production")
        return self


class InvalidSession(Exception):
    """A cookie value that is malformed, wrongly signed or expired."""


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """`payload.signature`: base64url JSON `{"sub", "exp"}` (and `rooms`, `publish` when
    given) and its HMAC-SHA256, base64url."""

    def __init__(self, key: str) -> None:
        self._key = key.encode()

    def _signature(self, payload: str) -> str:
        return _b64encode(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def sign(
        self,
        user: str,
        expires_at: float,
        *,
        rooms: list[str] | None = None,
        publish: list[str] | None = None,
    ) -> str:
        """A session for `user` until `expires_at`, for these rooms (None: every room)."""
        claims: dict[str, object] = {"sub": user, "exp": int(expires_at)}
        if rooms is not None:
            claims["rooms"] = rooms
        if publish is not None:
            claims["publish"] = publish
        payload = _b64encode(json.dumps(claims, separators=(",", ":")).encode())
        return f"{payload}.{self._signature(payload)}"

    def verify(self, value: str, *, now: float | None = None) -> Identity:
        # A signed value is ASCII; and `hmac.compare_digest` raises on any other str.
        if not value.isascii():
            raise InvalidSession("malformed session")
        payload, dot, signature = value.partition(".")
        if not dot or not hmac.compare_digest(signature, self._signature(payload)):
            raise InvalidSession("bad signature")
        try:
            claims = json.loads(_b64decode(payload))
            user, expires_at = claims["sub"], claims["exp"]
            grants = grants_from_claims(claims)
        except (ValueError, binascii.Error, KeyError, TypeError):
            raise InvalidSession("malformed session") from None
        if not isinstance(user, str) or not isinstance(expires_at, int):
            raise InvalidSession("malformed session")
        if expires_at <= (time.time() if now is None else now):
            raise InvalidSession("session expired")
        return Identity(user, expires_at=float(expires_at), grants=grants)


def _origin(url: str) -> str:
    """`scheme://host[:port]`, lower case: how browsers write the Origin header."""
    parts = urlsplit(url.strip())
    return f"{parts.scheme}://{parts.netloc}".lower()


RoomPattern = Annotated[str, Field(min_length=1, max_length=MAX_PATTERN_LENGTH)]


class LoginRequest(BaseModel):
    user: str = Field(pattern=USER_PATTERN)
    # The session's `rooms` and `publish`; absent: none (every room).
    rooms: list[RoomPattern] | None = Field(default=None, max_length=MAX_PATTERNS)
    publish: list[RoomPattern] | None = Field(default=None, max_length=MAX_PATTERNS)


class CookieAuth(IdentityFeature):
    """The handshake check, and the login and logout endpoints."""

    name = "cookie"

    def __init__(self, settings: CookieSettings) -> None:
        self.settings = settings
        key = settings.secret.get_secret_value()
        if not key:
            logger.warning("AUTH_SECRET is not set: signing with a random key for this process")
            key = secrets.token_urlsafe(MIN_SECRET_LENGTH)
        self.signer = SessionSigner(key)
        self._allowed = {_origin(origin) for origin in settings.allowed_origins}

    def origin_allowed(self, request: HTTPConnection) -> bool:
        origin = request.headers.get("origin")
        if not origin:
            # Browsers send one on every WebSocket handshake and every POST. A same-origin GET
            # (an EventSource) may come without one, and is safe: the SameSite=Lax cookie is not
            # sent with another site's subresource requests, nor could that site read the answer.
            return request.scope["type"] == "http" and request.scope.get("method") in (
                "GET",
                "HEAD",
            )
        origin = origin.lower()
        if origin in self._allowed:
            return True
        host = request.headers.get("host", "").lower()
        try:
            netloc = urlsplit(origin).netloc
        except ValueError:  # not a URL at all (`http://[`): no origin of ours
            return False
        return self.settings.allow_same_origin and bool(host) and netloc == host

    async def identify(self, request: HTTPConnection) -> Identity:
        """The identity the request proves, or HandshakeRefused. It reads only what a WebSocket
        upgrade and a plain HTTP request share, so an HTTP route (a stream) can use it too."""
        if not self.origin_allowed(request):
            raise HandshakeRefused(status.HTTP_403_FORBIDDEN, "origin not allowed")
        value = request.cookies.get(self.settings.cookie_name)
        if not value:
            raise HandshakeRefused(status.HTTP_401_UNAUTHORIZED, "not logged in")
        try:
            return self.signer.verify(value)
        except InvalidSession as error:
            raise HandshakeRefused(status.HTTP_401_UNAUTHORIZED, str(error)) from None

    def login(
        self,
        response: Response,
        user: str,
        *,
        rooms: list[str] | None = None,
        publish: list[str] | None = None,
    ) -> Identity:
        """Set a fresh session cookie for `user` on `response`, for these rooms (None: all)."""
        expires_at = time.time() + self.settings.session_seconds
        response.set_cookie(
            self.settings.cookie_name,
            self.signer.sign(user, expires_at, rooms=rooms, publish=publish),
            max_age=self.settings.session_seconds,
            httponly=True,
            samesite="lax",
            secure=self.settings.environment != "development",
        )
        grants = grants_from_claims({"rooms": rooms, "publish": publish})
        return Identity(user, expires_at=int(expires_at), grants=grants)

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/auth", tags=["auth"])

        @router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
        async def logout(response: Response) -> None:
            response.delete_cookie(
                self.settings.cookie_name,
                httponly=True,
                samesite="lax",
                secure=self.settings.environment != "development",
            )

        if self.settings.dev_endpoints:

            @router.post("/login")
            async def login(request: LoginRequest, response: Response) -> dict[str, object]:
                """Development only: log in as anyone (AUTH_DEV_ENDPOINTS=true)."""
                identity = self.login(
                    response, request.user, rooms=request.rooms, publish=request.publish
                )
                return {"user": identity.user, "expires_at": identity.expires_at}

        return router
