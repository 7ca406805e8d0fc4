"""Who a client is, decided at the handshake, before the socket is accepted.

An `Identify` coroutine looks at the upgrade request and returns an `Identity`, or raises
`HandshakeRefused` to answer the request with an HTTP error (401, 403) instead of accepting it.
The auth feature supplies one; without it every client is `anonymous`. An identity that expires
(a token's `exp`, a session's end) closes its connection with `SESSION_EXPIRED` at that moment.
"""

from __future__ import annotations

import asyncio
import heapq
import time
import weakref
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
    "Expiry",
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


def close_on_expiry(connection: Connection, identity: Identity) -> Expiry | None:
    """Close the connection with SESSION_EXPIRED when its credentials expire, if they do; the
    caller cancels the expiry when the connection ends first."""
    if identity.expires_at is None:
        return None
    loop = asyncio.get_running_loop()
    expiries = _expiries.get(loop)
    if expiries is None:
        expiries = _expiries[loop] = _Expiries()
    return expiries.add(connection, loop.time() + max(0.0, identity.expires_at - time.time()))


class Expiry:
    """One connection's place in its loop's `_Expiries`."""

    __slots__ = ("_expiries", "connection", "when")

    def __init__(self, connection: Connection, when: float, expiries: _Expiries) -> None:
        self.connection: Connection | None = connection  # None once cancelled or expired
        self.when = when  # on the loop's clock
        self._expiries = expiries

    def __lt__(self, other: Expiry) -> bool:
        return self.when < other.when

    def cancel(self) -> None:
        if self.connection is not None:
            self.connection = None
            self._expiries.cancelled()


class _Expiries:
    """The expiries of one event loop's connections, on one timer for the earliest: a heap
    entry each (about 80 bytes), where a timer each held a TimerHandle, the loop's timer and
    a bound method (about 600 bytes) for every authenticated connection.

    It keeps no reference to the loop (nor to its timers, which are left to fire when a new
    earliest expiry supersedes them: they find nothing due), so that `_expiries`, weak on
    the loop, lets go of it with the loop."""

    def __init__(self) -> None:
        self._heap: list[Expiry] = []
        self._cancelled = 0  # entries of the heap no longer wanted
        self._armed_at: float | None = None  # when the pending timer fires, if one is

    def add(self, connection: Connection, when: float) -> Expiry:
        expiry = Expiry(connection, when, self)
        heapq.heappush(self._heap, expiry)
        self._arm()
        return expiry

    def cancelled(self) -> None:
        self._cancelled += 1
        # Dropped once they are half the heap, so that connections closed long before their
        # credentials expire are not held until then: O(1) per cancel, amortized.
        if self._cancelled * 2 > len(self._heap):
            self._heap = [expiry for expiry in self._heap if expiry.connection is not None]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def _arm(self) -> None:
        """A timer for the earliest expiry, unless one fires by then."""
        if self._heap and (self._armed_at is None or self._heap[0].when < self._armed_at):
            self._armed_at = when = self._heap[0].when
            asyncio.get_running_loop().call_at(when, self._expire, when)

    def _expire(self, armed_at: float) -> None:
        if armed_at == self._armed_at:
            self._armed_at = None
        now = asyncio.get_running_loop().time()
        while self._heap and self._heap[0].when <= now:
            expiry = heapq.heappop(self._heap)
            connection, expiry.connection = expiry.connection, None
            if connection is None:
                self._cancelled -= 1
            else:
                connection.close(SESSION_EXPIRED, "session expired")
        self._arm()


_expiries: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Expiries] = (
    weakref.WeakKeyDictionary()
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
