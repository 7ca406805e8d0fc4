"""Who a client is, decided at the handshake, before the socket is accepted.

An `Identify` coroutine looks at the upgrade request and returns an `Identity`, or raises
`HandshakeRefused` to answer the request with an HTTP error (401, 403) instead of accepting it.
The auth feature supplies one; without it every client is `anonymous`. An identity that expires
(a token's `exp`, a session's end) closes its connection with `SESSION_EXPIRED` at that moment.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from fastapi import HTTPException
from starlette import status
from starlette.requests import HTTPConnection, Request

from .connection_log import Transport, log_connection_refused
from .hub import Connection
from .permissions import Grants
from .protocol import ProtocolError

__all__ = [
    "SESSION_EXPIRED",
    "HandshakeRefused",
    "Identify",
    "IdentifyRequest",
    "Identity",
    "anonymous",
    "anonymous_request",
    "close_on_expiry",
    "forbid_unless",
    "http_user",
]

# The close code of a connection whose token or session expired while it was open (4000-4999
# is the range RFC 6455 leaves to applications). The client should authenticate again.
SESSION_EXPIRED = 4001


class HandshakeRefused(Exception):
    """Raised by `identify` to answer the upgrade request with an HTTP error instead."""

    def __init__(
        self, status_code: int, detail: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        # Of the HTTP response: `Retry-After` with a 503, say.
        self.headers = dict(headers or {})


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated client: its user name, when its credentials stop being valid
    (seconds since the epoch), if they ever do, and the rooms they open (None: every room;
    one object shared by every connection of the same grants, see permissions.py)."""

    user: str
    expires_at: float | None = None
    grants: Grants | None = None


# It reads only what a WebSocket upgrade and a plain HTTP request share, so the HTTP routes
# (Server-Sent Events, publish) check clients the same way.
Identify = Callable[[HTTPConnection], Awaitable[Identity]]


async def anonymous(connection: HTTPConnection) -> Identity:
    """The identity of every client when the service has no authentication."""
    return Identity("anonymous")


def close_on_expiry(connection: Connection, identity: Identity) -> asyncio.TimerHandle | None:
    """Close the connection with SESSION_EXPIRED when its credentials expire, if they do; the
    caller cancels the timer when the connection ends first."""
    if identity.expires_at is None:
        return None
    delay = max(0.0, identity.expires_at - time.time())
    return asyncio.get_running_loop().call_later(
        delay, connection.close, SESSION_EXPIRED, "session expired"
    )


# The HTTP routes' side (`GET /sse`, `POST /publish`): the same checks, as FastAPI dependencies.
IdentifyRequest = Callable[[Request], Awaitable[Identity]]


async def anonymous_request(request: Request) -> Identity:
    """The identity of every HTTP client when the service has no authentication."""
    return Identity("anonymous")


def http_user(identify: Identify) -> IdentifyRequest:
    """The handshake check (auth) for the HTTP routes: a refusal becomes the same 401/403."""

    async def identity(request: Request) -> Identity:
        try:
            return await identify(request)
        except HandshakeRefused as refusal:
            # GET /sse or POST /publish.
            transport: Transport = "sse" if request.method == "GET" else "http"
            log_connection_refused(transport, refusal.status_code, refusal.detail, request.client)
            raise HTTPException(refusal.status_code, refusal.detail, refusal.headers) from None

    return identity


def forbid_unless(
    require: Callable[[Grants | None, str], None], identity: Identity, room: str
) -> None:
    """403 where a WebSocket client would get a `forbidden` error frame."""
    try:
        require(identity.grants, room)
    except ProtocolError as error:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"{error.code}: {error.detail}") from None
