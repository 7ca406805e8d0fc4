"""Command line: `python -m <package>` serves the app (`serve --reload` while developing)."""

from __future__ import annotations

import argparse
import sys

import uvicorn
from pydantic import ValidationError
from uvicorn.config import LOGGING_CONFIG
{% if cookiecutter.auth == "query_token" %}
from .auth_token import print_token
{%- endif %}
from .log_redaction import log_config
from .settings import Settings
from .ws_protocol import serving_protocol


def serve(settings: Settings, *, reload: bool) -> None:
    uvicorn.run(
        f"{__package__}.app:create_app",
        factory=True,
        host=settings.server.host,
        port=settings.server.port,
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
{%- if cookiecutter.use_heartbeats %}
        # No protocol-level pings: the application's heartbeat (heartbeat.py) replaces them.
        # Its pings reach the JavaScript client, which cannot see protocol pings and so cannot
        # tell a quiet server from a dead one, and one task pings every connection, where
        # uvicorn keeps a timer per connection.
        ws_ping_interval=None,
        ws_ping_timeout=None,
{%- endif %}
        # Query strings may carry credentials; uvicorn would log them with every request.
        log_config=log_config(LOGGING_CONFIG),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__package__}")
    commands = parser.add_subparsers(dest="command")
    serve_command = commands.add_parser("serve", help="serve the app (the default)")
    serve_command.add_argument("--reload", action="store_true", help="restart on code changes")
    serve_command.add_argument("--host", help="overrides SERVER_HOST")
    serve_command.add_argument("--port", type=int, help="overrides SERVER_PORT")
{%- if cookiecutter.auth == "query_token" %}
    token_command = commands.add_parser("token", help="print a signed token for USER")
    token_command.add_argument("user", metavar="USER")
    token_command.add_argument("--ttl", type=int, default=3600, help="seconds it is valid")
{%- endif %}
    args = parser.parse_args(argv)

    try:
        settings = Settings()
    except ValidationError as error:
        # A clear refusal to start, naming each setting at fault, rather than a traceback.
        print(f"error: invalid settings: {error}", file=sys.stderr)
        return 2
{%- if cookiecutter.auth == "query_token" %}
    if args.command == "token":
        return print_token(settings.auth, args.user, args.ttl)
{%- endif %}
    if args.command in (None, "serve"):
        overrides = {
            name: value
            for name in ("host", "port")
            if (value := getattr(args, name, None)) is not None
        }
        settings.server = settings.server.model_copy(update=overrides)
        serve(settings, reload=getattr(args, "reload", False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
