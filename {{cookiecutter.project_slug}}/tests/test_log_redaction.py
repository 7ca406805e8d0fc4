"""Query strings never reach uvicorn's log lines."""

from __future__ import annotations

import io
import logging

import pytest

from {{ cookiecutter.package_name }}.log_redaction import (
    UVICORN_LOGGERS,
    QueryStringRedactor,
    RefusedHandshakeNoise,
    install_log_filters,
    redact_query,
)


def test_redact_query_keeps_the_path_and_hides_the_query() -> None:
    assert redact_query("/ws?token=abc.def.ghi&room=a") == "/ws?[redacted]"
    assert redact_query("/healthz") == "/healthz"


@pytest.mark.parametrize(
    ("target", "logged"),
    [
        ("http%3A//host%3A80/sse?token=t0k", "http%3A//host%3A80/sse?[redacted]"),  # absolute
        ("%2A?token=t0k", "%2A?[redacted]"),  # asterisk-form with a query
        ("sse?token=t0k", "sse?[redacted]"),  # no leading slash
        ("/sse%3Ftoken%3Dt0k", "/sse?[redacted]"),  # an encoded question mark
        ("/sse%3ftoken%3Dt0k", "/sse?[redacted]"),
        ("%2A", "%2A"),
    ],
)
def test_every_request_target_form_is_redacted(target: str, logged: str) -> None:
    """uvicorn logs the path percent-encoded, then the query (see log_redaction.py)."""
    assert redact_query(target) == logged


def record(message: str, *args: object, name: str = "uvicorn.access") -> logging.LogRecord:
    return logging.LogRecord(name, logging.INFO, __file__, 1, message, args, None)


def test_the_filter_redacts_access_and_websocket_records() -> None:
    redactor = QueryStringRedactor()
    access = record('%s - "%s %s HTTP/%s" %d', "1.2.3.4:5", "GET", "/sse?token=t0k", "1.1", 200)
    websocket = record('%s - "WebSocket %s" [accepted]', "1.2.3.4:5", "/ws?token=t0k", name="x")
    for item in (access, websocket):
        assert redactor.filter(item)
        assert "t0k" not in item.getMessage()
        assert "?[redacted]" in item.getMessage()
    assert access.args == ("1.2.3.4:5", "GET", "/sse?[redacted]", "1.1", 200)


def test_only_the_refused_handshake_false_alarm_is_dropped() -> None:
    noise = RefusedHandshakeNoise()
    assert not noise.filter(record("ASGI callable returned without completing handshake."))
    assert noise.filter(record("Exception in ASGI application\n"))


def test_the_filters_sit_on_uvicorns_loggers_whatever_the_handlers() -> None:
    """On the loggers, not their handlers: a handler configured by anyone (uvicorn's default, a
    `--log-config` file) gets records already redacted."""
    install_log_filters()
    install_log_filters()  # idempotent
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        assert [type(f) for f in logger.filters].count(QueryStringRedactor) == 1
        logger.addHandler(handler)
        try:
            logger.warning('%s - "WebSocket %s" 403', "1.2.3.4:5", "ws?token=s3cret")
        finally:
            logger.removeHandler(handler)
    assert "s3cret" not in stream.getvalue()
    assert stream.getvalue().count("ws?[redacted]") == len(UVICORN_LOGGERS)
