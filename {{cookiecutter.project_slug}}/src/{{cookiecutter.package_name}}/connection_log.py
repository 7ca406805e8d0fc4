"""One log line per connection opened, closed or refused, WebSocket and SSE alike.

An operator must be able to see who was cut off and why, so every line names the connection,
its user, the transport (`ws`, `sse`, or `http` for a refused `POST /publish`) and, on close,
who closed it (`by`: `client` or `server`), the close code, the reason, how long it was open
(`duration_s`) and its rooms. A server-initiated close for abuse or trouble (1008 policy, 1009
too big, 1011 internal error, 1013 slow consumer) is a WARNING; every other line is INFO.

Each also counts the event (`metrics.py`). Called when a connection opens and when it ends,
never on the fan-out path. The fields travel
as data (`logs.EVENT_FIELDS`): JSON lines carry them as keys, text lines as `key=value`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Literal

from starlette import status

from .hub import Connection
from .logs import EVENT_FIELDS
from .metrics import CONNECTIONS, REFUSALS, count_close

__all__ = [
    "CLOSED_BY_THE_SERVER_ITSELF",
    "Transport",
    "log_connection_closed",
    "log_connection_opened",
    "log_connection_refused",
]

logger = logging.getLogger(f"{__package__}.connections")

Transport = Literal["ws", "sse", "http"]
Client = tuple[str, int] | None

# Close codes the server (uvicorn's protocol) sends by itself before the app hears of the close:
# a malformed frame (1002), invalid UTF-8 (1007), a frame over HUB_MAX_MESSAGE_BYTES (1009), the
# server shutting down (1012). The app sees them as a disconnect, but the server closed.
CLOSED_BY_THE_SERVER_ITSELF = frozenset(
    {
        status.WS_1002_PROTOCOL_ERROR,
        status.WS_1007_INVALID_FRAME_PAYLOAD_DATA,
        status.WS_1009_MESSAGE_TOO_BIG,
        status.WS_1012_SERVICE_RESTART,
    }
)
# Server-initiated closes an operator should look at: abuse, a failure, a client shed.
_WARNING_CODES = frozenset(
    {
        status.WS_1008_POLICY_VIOLATION,
        status.WS_1009_MESSAGE_TOO_BIG,
        status.WS_1011_INTERNAL_ERROR,
        status.WS_1013_TRY_AGAIN_LATER,
    }
)


def log_connection_opened(connection: Connection, transport: Transport, client: Client) -> float:
    """Log the open; return the time it opened, for `log_connection_closed`."""
    CONNECTIONS.labels(transport).inc()
    if logger.isEnabledFor(logging.INFO):
        _log(
            logging.INFO,
            "connection opened",
            conn=connection.id,
            user=connection.user,
            transport=transport,
            client=_address(client),
            rooms=sorted(connection.rooms),
        )
    return time.monotonic()


def log_connection_closed(
    connection: Connection,
    transport: Transport,
    started: float,
    disconnect: Mapping[str, Any] | None = None,
) -> None:
    """Log the end, before the connection leaves its rooms. `disconnect`: the transport's
    report of the close (a `websocket.disconnect` event), when there is one."""
    by = "client"
    code: int | None = None if disconnect is None else disconnect.get("code")
    reason: str = "" if disconnect is None else disconnect.get("reason") or ""
    if connection.close_code is not None:
        by, code, reason = "server", connection.close_code, connection.close_reason
    elif code in CLOSED_BY_THE_SERVER_ITSELF:
        by = "server"
    count_close(transport, code, by)
    level = logging.WARNING if by == "server" and code in _WARNING_CODES else logging.INFO
    if logger.isEnabledFor(level):
        _log(
            level,
            f"connection closed by {by}",
            conn=connection.id,
            user=connection.user,
            transport=transport,
            by=by,
            code=code,
            reason=reason,
            duration_s=round(time.monotonic() - started, 3),
            rooms=sorted(connection.rooms),
        )


def log_connection_refused(
    transport: Transport, status_code: int, reason: str, client: Client
) -> None:
    """Log a handshake (or stream, or publish) refused with an HTTP status, before accept."""
    REFUSALS.labels(transport, str(status_code)).inc()
    _log(
        logging.INFO,
        "connection refused",
        transport=transport,
        status=status_code,
        reason=reason,
        client=_address(client),
    )


def _log(level: int, message: str, **fields: Any) -> None:
    logger.log(level, message, extra={EVENT_FIELDS: fields})


def _address(client: Client) -> str | None:
    return None if client is None else f"{client[0]}:{client[1]}"
