"""Keep query strings out of uvicorn's logs.

uvicorn logs every request with its full path, query string included: the access log for HTTP
(`"GET /path?query HTTP/1.1" 200`) and its error logger for WebSocket handshakes
(`"WebSocket /ws?token=..." [accepted]`). A query string may carry a credential (the auth
feature's `?token=`), so this filter, attached to uvicorn's log handlers, replaces every logged
query string with `?[redacted]` before any handler writes the record. It works on the record's
arguments, so uvicorn's own formatters still get the values they expect.

A second filter drops one false alarm: uvicorn's sans-I/O WebSocket protocol logs "ASGI callable
returned without completing handshake." at ERROR after every handshake the app refuses with an
HTTP response (a bad token is a 401, not a server error). This app completes or refuses every
handshake, so the line never reports anything else here.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["REDACTED", "QueryStringRedactor", "RefusedHandshakeNoise", "log_config", "redact_query"]

REDACTED = "[redacted]"
REFUSED_HANDSHAKE_NOISE = "ASGI callable returned without completing handshake."


def redact_query(path: str) -> str:
    """`/ws?token=abc&room=a` becomes `/ws?[redacted]`; a path without a query is unchanged."""
    base, question_mark, _query = path.partition("?")
    return f"{base}?{REDACTED}" if question_mark else path


class QueryStringRedactor(logging.Filter):
    """Redacts the query string of every request path in a record's arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(
                redact_query(arg) if isinstance(arg, str) and arg.startswith("/") else arg
                for arg in record.args
            )
        return True


class RefusedHandshakeNoise(logging.Filter):
    """Drops uvicorn's false error after a refused handshake (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != REFUSED_HANDSHAKE_NOISE


def log_config(base: dict[str, Any]) -> dict[str, Any]:
    """A copy of a `logging.config.dictConfig` configuration (uvicorn's `LOGGING_CONFIG`)
    whose every handler redacts query strings and drops the refused-handshake false alarm."""
    config = {**base, "filters": {**base.get("filters", {})}, "handlers": {}}
    config["filters"]["redact_query_strings"] = {"()": f"{__name__}.QueryStringRedactor"}
    config["filters"]["refused_handshake_noise"] = {"()": f"{__name__}.RefusedHandshakeNoise"}
    for name, handler in base.get("handlers", {}).items():
        filters = [*handler.get("filters", []), "redact_query_strings", "refused_handshake_noise"]
        config["handlers"][name] = {**handler, "filters": filters}
    # The service's own lines (Redis going and coming back, say) through the same handler,
    # with their level, INFO included: without this only warnings reach stderr, unformatted.
    package = __name__.rpartition(".")[0]
    own = {"handlers": ["default"], "level": "INFO", "propagate": False}
    if "default" in config["handlers"]:
        config["loggers"] = {**base.get("loggers", {}), package: own}
    return config
