"""Query-token authentication: a signed JWT in `/ws?token=...`, checked before accept.

Browsers cannot set an Authorization header on a WebSocket, so the token travels in the query
string, and is checked during the handshake: signature, expiry (`exp`, required), not-before
(`nbf`), and issuer and audience when they are configured. A refusal is an HTTP 401 to the
upgrade request; nothing is accepted. A connection is closed with 4001 when its token expires.
The query string is redacted from uvicorn's logs (`log_redaction`), so tokens never reach them.

A token may carry `rooms` and `publish` claims, lists of room names or patterns (permissions.py):
the rooms it may join and publish to; without them, every room.

Tokens come from `python -m <package> token USER --ttl SECONDS [--rooms 'a,b*'] [--publish a]`,
from your own login service signing with the same secret, or, for the demo only, from
`POST /auth/dev-token`, which exists only while `AUTH_DEV_ENDPOINTS=true`.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
import time
from collections.abc import Callable
from typing import Annotated, Literal, Self, TypeVar

import jwt
from fastapi import APIRouter
from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette import status
from starlette.requests import HTTPConnection

from .commands import Command
from .feature import IdentityFeature
from .identity import HandshakeRefused, Identity
from .permissions import MAX_PATTERN_LENGTH, MAX_PATTERNS, grants_from_claims

__all__ = [
    "TokenAuth",
    "TokenRequest",
    "TokenSettings",
    "issue_token",
    "print_token",
    "token_command",
    "verify_token",
]

logger = logging.getLogger(__name__)

S = TypeVar("S")

# Shorter secrets are refused in production: HS256 wants at least 256 bits of key.
MIN_SECRET_LENGTH = 32
USER_PATTERN = r"^[A-Za-z0-9_.@-]{1,64}$"


class TokenSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUTH_", env_file=".env", extra="ignore")

    # The HMAC key tokens are signed with. Generation wrote a random one into `.env`; in
    # development, none at all means a random key per process (tokens die with it).
    secret: SecretStr = SecretStr("")
    # production: refuse to start without a strong secret, and no development endpoints.
    environment: Literal["development", "production"] = "development"
    algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    # Checked when set: a token must name this issuer (`iss`) and this audience (`aud`).
    issuer: str | None = None
    audience: str | None = None
    # Clock skew tolerated on `exp` and `nbf`, in seconds.
    leeway_seconds: float = Field(default=0.0, ge=0)
    # The longest lifetime `POST /auth/dev-token` grants.
    max_ttl_seconds: int = Field(default=3600, ge=1)
    # `POST /auth/dev-token` issues a token to anyone who asks: for the demo page only.
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


# The rooms a token may join and publish to (claims `rooms` and `publish`); None: no claim.
Patterns = list[str] | None


def issue_token(
    user: str,
    ttl_seconds: float,
    settings: TokenSettings,
    *,
    now: float | None = None,
    rooms: Patterns = None,
    publish: Patterns = None,
) -> str:
    """A token for `user`, valid from `now` for `ttl_seconds`, for these rooms (None: all)."""
    key = settings.secret.get_secret_value()
    return _issue(user, ttl_seconds, settings, key, now=now, rooms=rooms, publish=publish)


def _issue(
    user: str,
    ttl_seconds: float,
    settings: TokenSettings,
    key: str,
    *,
    now: float | None,
    rooms: Patterns = None,
    publish: Patterns = None,
) -> str:
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {
        "sub": user,
        "iat": issued,
        "nbf": issued,
        "exp": issued + int(ttl_seconds),
    }
    if settings.issuer is not None:
        claims["iss"] = settings.issuer
    if settings.audience is not None:
        claims["aud"] = settings.audience
    if rooms is not None:
        claims["rooms"] = rooms
    if publish is not None:
        claims["publish"] = publish
    return jwt.encode(claims, key, algorithm=settings.algorithm)


def verify_token(token: str, settings: TokenSettings, *, key: str | None = None) -> Identity:
    """The identity a token proves, or `jwt.InvalidTokenError` saying why it proves nothing."""
    if not token.isascii():
        # A JWT is base64url and dots; PyJWT would fail to encode a lone surrogate otherwise.
        raise jwt.DecodeError("a token is ASCII")
    claims = jwt.decode(
        token,
        key if key is not None else settings.secret.get_secret_value(),
        # One algorithm, fixed by the server: never the one the token's header asks for.
        algorithms=[settings.algorithm],
        issuer=settings.issuer,
        audience=settings.audience,
        leeway=settings.leeway_seconds,
        options={"require": ["exp", "sub"]},
    )
    user = claims["sub"]
    if not isinstance(user, str) or not user:
        raise jwt.InvalidTokenError("sub must be a non-empty string")
    if not user.isascii():
        try:
            user.encode()
        except UnicodeEncodeError:
            # A lone surrogate (`"\ud800"` in the JSON): no frame naming the user could be sent.
            raise jwt.InvalidTokenError("sub must be text that UTF-8 can hold") from None
    try:
        grants = grants_from_claims(claims)
    except ValueError as error:
        raise jwt.InvalidTokenError(str(error)) from None
    return Identity(user, expires_at=float(claims["exp"]), grants=grants)


RoomPattern = Annotated[str, Field(min_length=1, max_length=MAX_PATTERN_LENGTH)]


class TokenRequest(BaseModel):
    user: str = Field(pattern=USER_PATTERN)
    ttl_seconds: int | None = Field(default=None, ge=1)
    # The token's `rooms` and `publish` claims; absent: none (every room).
    rooms: list[RoomPattern] | None = Field(default=None, max_length=MAX_PATTERNS)
    publish: list[RoomPattern] | None = Field(default=None, max_length=MAX_PATTERNS)


class TokenAuth(IdentityFeature):
    """The handshake check, and the development endpoint that issues tokens."""

    name = "query_token"

    def __init__(self, settings: TokenSettings) -> None:
        self.settings = settings
        self._key = settings.secret.get_secret_value()
        if not self._key:
            logger.warning("AUTH_SECRET is not set: signing with a random key for this process")
            self._key = secrets.token_urlsafe(MIN_SECRET_LENGTH)

    def issue(
        self, user: str, ttl_seconds: float, *, rooms: Patterns = None, publish: Patterns = None
    ) -> str:
        return _issue(
            user, ttl_seconds, self.settings, self._key, now=None, rooms=rooms, publish=publish
        )

    async def identify(self, request: HTTPConnection) -> Identity:
        """The identity the request proves, or HandshakeRefused. It reads only what a WebSocket
        upgrade and a plain HTTP request share, so an HTTP route (a stream) can use it too."""
        token = request.query_params.get("token")
        if not token:
            raise HandshakeRefused(status.HTTP_401_UNAUTHORIZED, "missing token")
        try:
            return verify_token(token, self.settings, key=self._key)
        except jwt.ExpiredSignatureError:
            detail = "token expired"
        except jwt.ImmatureSignatureError:
            detail = "token not yet valid"
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
            detail = "token not meant for this service"
        except jwt.InvalidTokenError:
            # Malformed, wrongly signed, missing claims: the same answer, on purpose.
            detail = "invalid token"
        raise HandshakeRefused(status.HTTP_401_UNAUTHORIZED, detail)

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/auth", tags=["auth"])
        if not self.settings.dev_endpoints:
            return router

        @router.post("/dev-token")
        async def dev_token(request: TokenRequest) -> dict[str, object]:
            """Development only: a token for whoever asks (AUTH_DEV_ENDPOINTS=true)."""
            ttl = min(
                request.ttl_seconds or self.settings.max_ttl_seconds, self.settings.max_ttl_seconds
            )
            token = self.issue(request.user, ttl, rooms=request.rooms, publish=request.publish)
            return {"token": token, "ttl_seconds": ttl}

        return router


def pattern_list(text: str | None) -> Patterns:
    """`--rooms 'a,b*'` as a claim: comma-separated names or patterns; '' is no room at all."""
    if text is None:
        return None
    return [item for item in (part.strip() for part in text.split(",")) if item]


def print_token(
    settings: TokenSettings,
    user: str,
    ttl_seconds: int,
    *,
    rooms: str | None = None,
    publish: str | None = None,
) -> int:
    """The `token` command: print a token for `user` (for the rooms given, comma-separated;
    None: every room); exit status 2 when none can be made."""
    if not settings.secret.get_secret_value():
        print("error: AUTH_SECRET is not set: no service could verify it", file=sys.stderr)
        return 2
    if ttl_seconds < 1:
        print("error: --ttl must be at least 1 second", file=sys.stderr)
        return 2
    room_list, publish_list = pattern_list(rooms), pattern_list(publish)
    try:  # the server would refuse the token
        grants_from_claims({"rooms": room_list, "publish": publish_list})
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(issue_token(user, ttl_seconds, settings, rooms=room_list, publish=publish_list))
    return 0


def _token_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user", metavar="USER")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds it is valid")
    parser.add_argument(
        "--rooms", help="rooms it may join: names or patterns, comma-separated (default: all)"
    )
    parser.add_argument(
        "--publish", help="rooms it may publish to, the same way (default: those of --rooms)"
    )


def token_command(auth_of: Callable[[S], TokenSettings]) -> Command[S]:
    """`python -m <package> token USER`: print a signed token (`auth_of` finds this feature's
    settings among all of them)."""

    def run(args: argparse.Namespace, settings: S) -> int:
        return print_token(
            auth_of(settings), args.user, args.ttl, rooms=args.rooms, publish=args.publish
        )

    return Command("token", "print a signed token for USER", _token_arguments, run)
