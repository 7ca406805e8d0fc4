"""Prometheus metrics at `GET /metrics` (prometheus-client, the text exposition format).

Each is counted where it happens once: a connection opening, closing or being refused
(`connection_log.py` calls `count_*`), a frame from a client, a message published, and a
message handed to a room's members here. `messages_delivered_total` grows by the number of
members that took a message, in one increment per message and room: the fan-out loop itself
counts nothing, so it costs no more per subscriber than before.

Several workers (`serve --workers N`): `serve` gives them one directory
(`PROMETHEUS_MULTIPROC_DIR`) where each keeps its values (prometheus-client's multiprocess
mode), so whichever worker answers a scrape reports the sum over all of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from fastapi import APIRouter
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from starlette import status
from starlette.responses import Response

__all__ = [
    "CONNECTIONS",
    "MESSAGES_DELIVERED",
    "MESSAGES_DROPPED",
    "MESSAGES_PUBLISHED",
    "MESSAGES_RECEIVED",
    "REDIS_CONNECTS",
    "REDIS_UP",
    "ROOMS",
    "SSE_RESUMES",
    "SSE_RESYNCS",
    "count_close",
    "counting_rooms",
    "metrics_router",
]

CONNECTIONS = Gauge(
    "realtime_connections",
    "Open connections, by transport (ws, sse)",
    ["transport"],
    multiprocess_mode="livesum",
)
ROOMS = Gauge(
    "realtime_rooms",
    "Rooms with members (each worker counts the rooms it has members of)",
    multiprocess_mode="livesum",
)
MESSAGES_RECEIVED = Counter("realtime_messages_received", "Frames received from clients")
MESSAGES_PUBLISHED = Counter(
    "realtime_messages_published", "Messages published (WebSocket publish, POST /publish)"
)
MESSAGES_DELIVERED = Counter(
    "realtime_messages_delivered", "Messages handed to a member's outbox, summed over members"
)
MESSAGES_DROPPED = Counter(
    "realtime_messages_dropped",
    "Messages a member did not take (its outbox full, or it was closing)",
)
CLOSES = Counter("realtime_closes", "Connections closed, by close code and by whom", ["code", "by"])
SLOW_CONSUMER_CLOSES = Counter(
    "realtime_slow_consumer_closes", "Connections closed as slow consumers (1013)"
)
SSE_RESUMES = Counter("realtime_sse_resumes", "SSE streams that resumed from a Last-Event-ID")
SSE_RESYNCS = Counter(
    "realtime_sse_resyncs", "Rooms of a resuming stream whose events were no longer kept"
)
REDIS_UP = Gauge(
    "realtime_redis_up",
    "1 while the Redis listener is connected (with several workers: the lowest of them)",
    multiprocess_mode="livemin",
)
REDIS_CONNECTS = Counter(
    "realtime_redis_connects", "Connections of the Redis listener made: the first, then reconnects"
)
REFUSALS = Counter(
    "realtime_handshakes_refused",
    "Handshakes (and streams, and publishes) refused, by HTTP status",
    ["transport", "status"],
)

# Both transports are reported from the start, at 0, rather than from their first connection.
for _transport in ("ws", "sse"):
    CONNECTIONS.labels(_transport)


def count_close(transport: str, code: int | None, by: str) -> None:
    CONNECTIONS.labels(transport).dec()
    CLOSES.labels(str(code), by).inc()
    if code == status.WS_1013_TRY_AGAIN_LATER and by == "server":
        SLOW_CONSUMER_CLOSES.inc()


def counting_rooms(
    opened: Callable[[str], None], closed: Callable[[str], None]
) -> tuple[Callable[[str], None], Callable[[str], None]]:
    """The hub's room callbacks, counting rooms as they open and close."""

    def on_opened(room: str) -> None:
        ROOMS.inc()
        opened(room)

    def on_closed(room: str) -> None:
        ROOMS.dec()
        closed(room)

    return on_opened, on_closed


def metrics_router() -> APIRouter:
    router = APIRouter(tags=["metrics"])

    @router.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        registry: CollectorRegistry = REGISTRY
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
