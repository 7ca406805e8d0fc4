"""Typed settings, read from the environment and from `.env`.

One group per concern, each with its own environment prefix (`HUB_OUTBOX_LIMIT=2048`); every
limit and interval of the service is here. A feature's group lives in the feature's module.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
{% if cookiecutter.auth == "query_token" %}
from .auth_token import TokenSettings
{%- elif cookiecutter.auth == "cookie" %}
from .auth_cookie import CookieSettings
{%- endif %}
from .broker import PublishSettings
from .capacity import CapacitySettings
{%- if cookiecutter.use_heartbeats %}
from .heartbeat import HeartbeatSettings
{%- endif %}
from .hub import SlowConsumerPolicy
from .logs import LogFormat
from .presence import PresenceSettings
{%- if cookiecutter.use_redis %}
from .redis_broker import RedisSettings
{%- endif %}
{%- if cookiecutter.use_rooms %}
from .rooms import RoomSettings
{%- endif %}
{%- if cookiecutter.use_sse %}
from .sse import SseSettings
{%- endif %}

__all__ = ["HubSettings", "ServerSettings", "Settings"]


class ServerSettings(BaseSettings):
    """How the `serve` command runs uvicorn."""

    model_config = SettingsConfigDict(env_prefix="SERVER_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # text (timestamp, level, logger, message) or json (one object per line; logs.py).
    log_format: LogFormat = "text"
    # Processes serving the port (uvicorn's supervisor restarts any that dies). More than one
    # needs Redis, through which they share rooms.
    workers: int = Field(default=1, ge=1)
    # Prometheus metrics at GET /metrics (metrics.py).
    metrics: bool = True
    # On SIGTERM open sockets are closed with 1012 (service restart) at once; this bounds how
    # long the process then waits for handlers to finish before it cancels them and exits.
    shutdown_timeout_seconds: int = Field(default=5, ge=0)
    # Off by default: each subscriber gets its own compressor, so a broadcast would be
    # compressed once per client, roughly doubling CPU and memory per connection.
    per_message_deflate: bool = False
    # Seconds between full garbage collections (gc_pacing.py); 0 leaves CPython's own
    # schedule, under which a collection can stall every connection at any moment.
    gc_full_collect_seconds: float = Field(default=60.0, ge=0)
    # Log every garbage collection with its generation and pause (gc_pacing.py): a diagnostic.
    gc_log: bool = False
    # uvicorn's event loop and HTTP parser; "auto" takes uvloop and httptools when installed.
    loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    http: Literal["auto", "h11", "httptools"] = "auto"


class HubSettings(BaseSettings):
    """Limits of each connection."""

    model_config = SettingsConfigDict(env_prefix="HUB_", env_file=".env", extra="ignore")

    # Frames queued for one client before the slow-consumer policy applies. Size it for the
    # largest burst a healthy client must absorb, or healthy clients get shed during bursts.
    outbox_limit: int = Field(default=1024, ge=1)
    slow_consumer_policy: SlowConsumerPolicy = SlowConsumerPolicy.CLOSE
    # A client that is behind gets what is queued for it in one frame, a message per line, up
    # to about this many bytes: one write instead of many, the main cost of a broadcast.
    # 0 sends one message per frame, for clients that cannot split frames on newlines.
    batch_bytes: int = Field(default=64 * 1024, ge=0)
    # A larger frame closes the connection with 1009 (message too big).
    max_message_bytes: int = Field(default=64 * 1024, ge=256)
    # Frames a client may send per second on average, and in one burst; past that the
    # connection is closed with 1008 (policy violation). Pings and pongs count as frames.
    rate_per_second: float = Field(default=50.0, gt=0)
    rate_burst: int = Field(default=100, ge=1)
    # How long to wait for a client to take the close frame before giving up on it: its
    # socket is then aborted, releasing its buffers at once.
    close_timeout_seconds: float = Field(default=2.0, gt=0)


class Settings(BaseModel):
    """All settings; each group reads its own environment variables when created."""

    server: ServerSettings = Field(default_factory=ServerSettings)
    hub: HubSettings = Field(default_factory=HubSettings)
    capacity: CapacitySettings = Field(default_factory=CapacitySettings)
    publish: PublishSettings = Field(default_factory=PublishSettings)
    presence: PresenceSettings = Field(default_factory=PresenceSettings)
{%- if cookiecutter.use_rooms %}
    rooms: RoomSettings = Field(default_factory=RoomSettings)
{%- endif %}
{%- if cookiecutter.use_redis %}
    redis: RedisSettings = Field(default_factory=RedisSettings)
{%- endif %}
{%- if cookiecutter.use_heartbeats %}
    heartbeat: HeartbeatSettings = Field(default_factory=HeartbeatSettings)
{%- endif %}
{%- if cookiecutter.auth == "query_token" %}
    auth: TokenSettings = Field(default_factory=TokenSettings)
{%- elif cookiecutter.auth == "cookie" %}
    auth: CookieSettings = Field(default_factory=CookieSettings)
{%- endif %}
{%- if cookiecutter.use_sse %}
    sse: SseSettings = Field(default_factory=SseSettings)
{%- endif %}
