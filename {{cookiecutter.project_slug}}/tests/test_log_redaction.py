"""Query strings never reach uvicorn's log lines."""

from __future__ import annotations

import io
import logging
import logging.config

from uvicorn.config import LOGGING_CONFIG

from {{ cookiecutter.package_name }}.log_redaction import (
    QueryStringRedactor,
    RefusedHandshakeNoise,
    log_config,
    redact_query,
)


def test_redact_query_keeps_the_path_and_hides_the_query() -> None:
    assert redact_query("/ws?token=abc.def.ghi&room=a") == "/ws?[redacted]"
    assert redact_query("/healthz") == "/healthz"


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


def test_uvicorns_logging_config_gets_the_filters_on_every_handler() -> None:
    config = log_config(LOGGING_CONFIG)
    assert config["handlers"], "uvicorn's config names its handlers"
    for handler in config["handlers"].values():
        assert "redact_query_strings" in handler["filters"]
        assert "refused_handshake_noise" in handler["filters"]
    assert "filters" not in LOGGING_CONFIG["handlers"]["default"], "the original is unchanged"

    logging.config.dictConfig(config)
    stream = io.StringIO()
    handler = logging.getLogger("uvicorn.access").handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "1.2.3.4:5", "GET", "/ws?token=s3cret", "1.1", 101
    )
    assert "s3cret" not in stream.getvalue()
    assert "/ws?[redacted]" in stream.getvalue()
