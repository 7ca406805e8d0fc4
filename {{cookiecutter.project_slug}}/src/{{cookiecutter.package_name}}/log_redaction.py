"""Keep query strings out of the log, however the app is run.

uvicorn logs every request with its target, query string included: the access log for HTTP
(`"GET /path?query HTTP/1.1" 200`) and its error logger for WebSocket handshakes
(`"WebSocket /ws?token=..." [accepted]`). A query string may carry a credential (the auth
feature's `?token=`), so this filter replaces every logged query string with `?[redacted]`.

It is a filter of the loggers uvicorn writes these lines to, not of their handlers, installed
by the app itself (`install_log_filters`, which `create_app` calls): a logger's filters see each
of its records before any handler does, whatever logging configuration is in place (the
service's own, uvicorn's default under `uvicorn --factory`, a `--log-config` file), so no way of
running the app bypasses it. It works on the record's arguments, so formatters still get the
values they expect.

Every request-target form is covered (RFC 9112, section 3.2): uvicorn logs the target's path,
percent-encoded, then its query: `/ws?q` (origin-form), `http%3A//host/ws?q` (absolute-form),
`%2A?q` (asterisk-form), `ws?q` (no leading slash). So any argument is cut at its first `?`,
whatever it starts with, and at a percent-encoded one (`/ws%3Ftoken=...` reaches the log as a
path).

A second filter drops one false alarm: uvicorn's sans-I/O WebSocket protocol logs "ASGI callable
returned without completing handshake." at ERROR after every handshake the app refuses with an
HTTP response (a bad token is a 401, not a server error). This app completes or refuses every
handshake, so the line never reports anything else here.
"""

from __future__ import annotations

import logging
import re

__all__ = [
    "REDACTED",
    "UVICORN_LOGGERS",
    "QueryStringRedactor",
    "RefusedHandshakeNoise",
    "install_log_filters",
    "redact_query",
]

REDACTED = "[redacted]"
REFUSED_HANDSHAKE_NOISE = "ASGI callable returned without completing handshake."
# The loggers uvicorn writes request targets to (HTTP and WebSocket protocols alike).
UVICORN_LOGGERS = ("uvicorn.error", "uvicorn.access")

_QUERY = re.compile(r"\?|%3F", re.IGNORECASE)


def redact_query(target: str) -> str:
    """`/ws?token=abc&room=a` becomes `/ws?[redacted]`; a target without a query is unchanged."""
    query = _QUERY.search(target)
    return target if query is None else f"{target[: query.start()]}?{REDACTED}"


class QueryStringRedactor(logging.Filter):
    """Redacts the query string of every request target in a record's arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(
                redact_query(arg) if isinstance(arg, str) else arg for arg in record.args
            )
        return True


class RefusedHandshakeNoise(logging.Filter):
    """Drops uvicorn's false error after a refused handshake (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != REFUSED_HANDSHAKE_NOISE


def install_log_filters(names: tuple[str, ...] = UVICORN_LOGGERS) -> None:
    """Put both filters on the named loggers; installing them again changes nothing."""
    for name in names:
        logger = logging.getLogger(name)
        for kind in (QueryStringRedactor, RefusedHandshakeNoise):
            if not any(isinstance(existing, kind) for existing in logger.filters):
                logger.addFilter(kind())
