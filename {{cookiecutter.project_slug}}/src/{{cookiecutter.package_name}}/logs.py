"""How log lines look and where they go: `SERVER_LOG_FORMAT=text` (the default) or `json`.

`log_config` is the `logging.config.dictConfig` configuration that `serve` hands uvicorn, which
applies it in every worker: uvicorn's own lines (its access lines on stdout, the rest on
stderr, as uvicorn does) and the service's lines (on stderr) in one format, at
`SERVER_LOG_LEVEL`.

- text: `2026-01-31T12:00:00.123Z INFO uvicorn.access 127.0.0.1:5000 - "GET /healthz
  HTTP/1.1" 200`, with an event's fields after the message as `key=value`;
- json: one object per line, `ts`, `level`, `logger`, `msg` and `pid` (to tell workers apart),
  then the event's fields (`connection_log.py`: `conn`, `user`, `transport`, `code`...), the
  fields of an access line (`client`, `method`, `path`, `status`) and `exc`, a traceback.

The standard `logging` module: a formatter is all JSON lines need, and uvicorn's loggers are
standard loggers, so one configuration holds both. (structlog or python-json-logger would add a
dependency to do the same.)
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Literal

__all__ = ["EVENT_FIELDS", "JsonFormatter", "LogFormat", "TextFormatter", "log_config"]

LogFormat = Literal["text", "json"]

# The attribute of a record holding its event's fields: `logger.info(msg, extra={EVENT_FIELDS:
# {...}})`.
EVENT_FIELDS = "fields"

# uvicorn's access line: `'%s - "%s %s HTTP/%s" %d'` with these arguments.
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


def timestamp(created: float) -> str:
    """ISO 8601 in UTC, to the millisecond: `2026-01-31T12:00:00.123Z`."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def event_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = dict(getattr(record, EVENT_FIELDS, None) or {})
    args = record.args
    if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
        fields |= dict(zip(_ACCESS_FIELDS, args, strict=True))
    return fields


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return timestamp(record.created)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = getattr(record, EVENT_FIELDS, None)
        if fields:
            line += "".join(f" {key}={_logfmt(value)}" for key, value in fields.items())
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        line |= event_fields(record)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        # ASCII only: a stray surrogate from a client can never make the line unwritable.
        return json.dumps(line, default=str)


def _logfmt(value: object) -> str:
    if value is None or isinstance(value, int | float):
        return str(value)
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text and all(c.isprintable() and not c.isspace() and c not in '"=' for c in text):
        return text
    return json.dumps(text)


def log_config(log_format: LogFormat, level: str) -> dict[str, Any]:
    """The `dictConfig` configuration of every process `serve` starts (see the module
    docstring); uvicorn then sets its own loggers to `level` too."""
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": f"{__name__}.{formatter.__name__}"}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            },
            "access": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stdout",
            },
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
        # The service's own loggers.
        "root": {"handlers": ["default"], "level": level.upper()},
    }
