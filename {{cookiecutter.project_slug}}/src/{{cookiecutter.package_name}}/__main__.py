"""Command line: `python -m <package>` serves the app (`serve --reload` while developing,
`serve --workers N` to use N cores)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import uvicorn
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from .broker import MEMORY, broker_scheme
from .features import COMMANDS, provided
from .logs import log_config
from .settings import Settings
from .ws_protocol import serving_protocol


def serve(settings: Settings, *, reload: bool) -> None:
    if settings.server.workers > 1:
        # Each worker keeps its metrics there, and any of them answers a scrape with the sum
        # (prometheus-client's multiprocess mode, metrics.py); fresh on every start.
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="metrics-"))
    uvicorn.run(
        f"{__package__}.app:create_app",
        factory=True,
        host=settings.server.host,
        port=settings.server.port,
        # Several processes on one port: uvicorn's supervisor binds the socket, starts each
        # worker as a fresh process that builds the app from the string above and gets every
        # option below (the protocol class, the log configuration), restarts any that dies and
        # hands each SIGTERM on. The app brings the rest itself (log redaction, GC pacing,
        # heartbeats), in every worker.
        workers=settings.server.workers,
        log_level=settings.server.log_level,
        loop=settings.server.loop,
        http=settings.server.http,
        reload=reload,
        # uvicorn's sans-I/O websockets implementation (the fastest of its three, measured),
        # holding less per connection.
        ws=serving_protocol(),  # uvicorn's own, with a WARNING, should this uvicorn lack a part
        ws_per_message_deflate=settings.server.per_message_deflate,
        # uvicorn then refuses larger frames itself with 1009, before they are buffered.
        ws_max_size=settings.hub.max_message_bytes,
        timeout_graceful_shutdown=settings.server.shutdown_timeout_seconds,
        # With the heartbeat feature, no protocol-level pings: the application's heartbeat
        # (heartbeat.py) replaces them. Its pings reach the JavaScript client, which cannot
        # see protocol pings and so cannot tell a quiet server from a dead one, and one task
        # pings every connection, where uvicorn keeps a timer per connection.
        ws_ping_interval=None if has_group(settings, "heartbeat") else 20.0,
        ws_ping_timeout=None if has_group(settings, "heartbeat") else 20.0,
        # uvicorn's lines and the service's in one format (SERVER_LOG_FORMAT); the app itself
        # keeps query strings, which may carry credentials, out of them (log_redaction.py).
        log_config=log_config(settings.server.log_format, settings.server.log_level),
    )


def has_group(settings: Settings, group: str) -> bool:
    """Whether the project was generated with the feature of this settings group."""
    return group in type(settings).model_fields


def refusal_to_serve(settings: Settings, *, reload: bool) -> str | None:
    """Why these settings cannot be served, if they cannot."""
    server = settings.server
    if server.workers > 1 and reload:
        return "--reload serves one process: it cannot be combined with --workers above 1"
    with_redis = has_group(settings, "redis")
    served = ("memory", *provided(settings).brokers)
    if (scheme := broker_scheme(settings.broker.url, with_redis)) not in served:
        known = ", ".join(f"{name}://" for name in served)
        return f"BROKER_URL: no broker for {scheme}:// in this service (it has {known})"
    if server.workers > 1 and broker_scheme(settings.broker.url, with_redis) == "memory":
        # Each worker would have rooms of its own, and a message would reach only the clients
        # of the worker it was sent to, silently.
        if not with_redis:
            return (
                f"--workers {server.workers} (SERVER_WORKERS) needs Redis, through which "
                "workers share rooms: this project was generated without it (use_redis)"
            )
        return (
            f"--workers {server.workers} (SERVER_WORKERS) needs Redis, through which workers "
            f"share rooms: BROKER_URL is {MEMORY}"
        )
    return None


def settings_errors(error: ValidationError) -> list[str]:
    """Each error as `VARIABLE: what is wrong`, naming the environment variable (or `.env`
    line) to fix; never the value, which may be a secret."""
    prefixes = {
        group.__name__: group.model_config.get("env_prefix", "")
        for field in Settings.model_fields.values()
        if isinstance(group := field.annotation, type) and issubclass(group, BaseSettings)
    }
    prefix = prefixes.get(error.title, "")
    lines = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if not item["loc"]:  # a check of the whole group, whose message names its variables
            lines.append(message)
            continue
        name, *within = item["loc"]
        where = "".join(f"[{part}]" for part in within)
        lines.append(f"{prefix}{name}".upper() + f"{where}: {message}")
    return lines


def at_least_one(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {number}")
    return number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__package__}")
    commands = parser.add_subparsers(dest="command")
    serve_command = commands.add_parser("serve", help="serve the app (the default)")
    serve_command.add_argument("--reload", action="store_true", help="restart on code changes")
    serve_command.add_argument("--host", help="overrides SERVER_HOST")
    serve_command.add_argument("--port", type=int, help="overrides SERVER_PORT")
    serve_command.add_argument(
        "--workers", type=at_least_one, help="processes to serve with; overrides SERVER_WORKERS"
    )
    for command in COMMANDS:
        command.add_arguments(commands.add_parser(command.name, help=command.help))
    args = parser.parse_args(argv)

    try:
        settings = Settings()
    except ValidationError as error:
        # A clear refusal to start, naming each variable at fault, rather than a traceback.
        print(f"error: invalid settings: {'; '.join(settings_errors(error))}", file=sys.stderr)
        return 2
    for command in COMMANDS:
        if args.command == command.name:
            return command.run(args, settings)
    if args.command in (None, "serve"):
        overrides = {
            name: value
            for name in ("host", "port", "workers")
            if (value := getattr(args, name, None)) is not None
        }
        settings.server = settings.server.model_copy(update=overrides)
        reload = getattr(args, "reload", False)
        if refusal := refusal_to_serve(settings, reload=reload):
            print(f"error: {refusal}", file=sys.stderr)
            return 2
        serve(settings, reload=reload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
