"""Capacity: how many clients one process takes, said out loud, and what happens past it.

Every open WebSocket and SSE stream holds a file descriptor, and a process holds at most its
open-file limit (`RLIMIT_NOFILE`). Most systems start a process with a soft limit of 1,024 and
a far higher hard limit, which the process may raise itself without any privilege: at start-up
the soft limit is raised to the hard limit, and both are logged.

`SERVER_MAX_CONNECTIONS` caps the WebSocket connections and SSE streams open at once. By default
it is the soft limit less `headroom(limit)` descriptors kept for everything else the process
opens: its own (standard streams, the event loop, listening sockets, log files), its Redis
connections, health probes, publishes, and the refusals themselves, since every refused
handshake holds a descriptor for as long as its 503 takes. Past the cap a new WebSocket upgrade
or SSE stream is refused before accept with HTTP 503 and `Retry-After`, so the client backs off
(and a load balancer can send it elsewhere), while the descriptors kept back let `/healthz`,
`/readyz` and publishes through; `/readyz` reports `"capacity": false` meanwhile.

Should the process still run out of descriptors (clients that open TCP connections and send
nothing, say), asyncio's accept loop logs a traceback for every failed accept, a backlog's
worth (2,048 under uvicorn) each second, megabytes a second: `AcceptErrorLog` replaces them
with one WARNING, then one per interval counting the failures since, and no traceback. uvloop
(the default loop) never reports them: libuv accepts and at once closes what it cannot keep.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette import status
from starlette.requests import HTTPConnection

from .hub import Hub
from .identity import HandshakeRefused, Identify, Identity

__all__ = [
    "ACCEPT_OUT_OF_RESOURCES",
    "AcceptErrorLog",
    "Capacity",
    "CapacitySettings",
    "default_max_connections",
    "headroom",
    "raise_file_limit",
]

logger = logging.getLogger(__name__)
# The start-up line goes next to uvicorn's own ("Started server process"), which every log
# config uvicorn runs with prints at INFO.
startup_logger = logging.getLogger("uvicorn.error")

# The message of the error context asyncio reports when `accept()` fails for want of resources
# (EMFILE, ENFILE, ENOBUFS, ENOMEM); `selector_events.py`, unchanged since Python 3.8.
ACCEPT_OUT_OF_RESOURCES = "socket.accept() out of system resource"
# The soft limit asked for when the hard limit is unlimited (Linux's default `fs.nr_open`).
UNLIMITED_TARGET = 1 << 20


class CapacitySettings(BaseSettings):
    """The `SERVER_*` settings of capacity."""

    model_config = SettingsConfigDict(env_prefix="SERVER_", env_file=".env", extra="ignore")

    # WebSocket connections and SSE streams open at once; unset: the open-file limit less
    # `headroom` (10% of it, at least 64, at most 1,024).
    max_connections: int | None = Field(default=None, ge=1)
    # The `Retry-After` of a handshake refused at capacity, in seconds.
    retry_after_seconds: int = Field(default=5, ge=0)
    # Failed accepts (out of file descriptors) are logged at most once per this many seconds.
    accept_error_log_seconds: float = Field(default=10.0, gt=0)

    @field_validator("max_connections", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `SERVER_MAX_CONNECTIONS=` (the line of .env.example, uncommented) means the default.
        return None if value == "" else value


def raise_file_limit() -> tuple[int, int, int]:
    """Raise the soft open-file limit to the hard one; return (soft before, soft, hard)."""
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if before != resource.RLIM_INFINITY and before < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as error:
            logger.warning("could not raise the open-file limit to %d: %s", target, error)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return before, soft, hard


def headroom(limit: int) -> int:
    """File descriptors kept for everything but clients: 10% of the limit, at least 64 (the
    process's own, a few Redis connections, probes), at most 1,024 (refusals in flight during a
    reconnect storm take milliseconds each; more than a thousand at once is not a storm)."""
    return min(max(64, limit // 10), 1024)


def default_max_connections(limit: int) -> int:
    return max(1, limit - headroom(limit))


class AcceptErrorLog:
    """An event-loop exception handler: failed accepts become one WARNING at the first, then
    one per interval with a count; every other error goes to the handler that was there."""

    def __init__(self, interval_seconds: float) -> None:
        self.interval_seconds = interval_seconds
        self.failures = 0  # since the last line logged
        self._flush: asyncio.TimerHandle | None = None
        self._previous: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self)

    def uninstall(self) -> None:
        if self._loop is not None:
            self._loop.set_exception_handler(self._previous)
            self._loop = None
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != ACCEPT_OUT_OF_RESOURCES:
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        if self._flush is None:
            logger.warning(
                "accept failed: %s (open-file limit %d); new connections wait in the backlog. "
                "Further failures are counted and logged every %g s",
                context.get("exception"),
                resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                self.interval_seconds,
            )
            self._flush = loop.call_later(self.interval_seconds, self._log_count)
        else:
            self.failures += 1

    def _log_count(self) -> None:
        if self.failures == 0:
            self._flush = None  # quiet again: the next failure is logged at once
            return
        logger.warning(
            "accept failed %d times in the last %g s: out of file descriptors",
            self.failures,
            self.interval_seconds,
        )
        self.failures = 0
        assert self._loop is not None
        self._flush = self._loop.call_later(self.interval_seconds, self._log_count)


class Capacity:
    """The connection cap, checked at every WebSocket and SSE handshake."""

    def __init__(self, hub: Hub, settings: CapacitySettings) -> None:
        self.hub = hub
        self.settings = settings
        self.accept_errors = AcceptErrorLog(settings.accept_error_log_seconds)

    @property
    def max_connections(self) -> int:
        """The cap: the setting, or derived from the soft limit as it is now (a limit lowered
        under a running process, by `prlimit`, lowers it too)."""
        if self.settings.max_connections is not None:
            return self.settings.max_connections
        return default_max_connections(resource.getrlimit(resource.RLIMIT_NOFILE)[0])

    def start(self) -> None:
        before, soft, hard = raise_file_limit()
        startup_logger.info(
            "open-file limit: soft %d (was %d), hard %d; at most %d connections%s",
            soft,
            before,
            hard,
            self.max_connections,
            "" if self.settings.max_connections is None else " (SERVER_MAX_CONNECTIONS)",
        )
        self.accept_errors.install(asyncio.get_running_loop())

    def stop(self) -> None:
        self.accept_errors.uninstall()

    def has_room(self) -> bool:
        """False at the cap: the readiness check, and the handshake check."""
        return len(self.hub) < self.max_connections

    def guard(self, identify: Identify) -> Identify:
        """`identify`, refusing new long-lived clients (a WebSocket upgrade, a GET: the SSE
        stream) with 503 at the cap, before their credentials are even looked at. A publish
        (POST) is one short request: it passes."""

        async def identify_within_capacity(connection: HTTPConnection) -> Identity:
            is_http = connection.scope["type"] == "http"
            long_lived = not is_http or connection.scope.get("method") == "GET"
            if long_lived and not self.has_room():
                headers = {"Retry-After": str(self.settings.retry_after_seconds)}
                if is_http:
                    headers["Connection"] = "close"  # no idle keep-alive holding a descriptor
                raise HandshakeRefused(
                    status.HTTP_503_SERVICE_UNAVAILABLE,
                    f"at capacity ({self.max_connections} connections): retry later",
                    headers=headers,
                )
            return await identify(connection)

        return identify_within_capacity
