"""Typed settings, read from the environment and from `.env`.

One group per concern, each with its own environment prefix (`HUB_OUTBOX_LIMIT=2048`); every
limit and interval of the service is here. A group lives in the module it configures;
this one only gathers them, and only the app factory and the command line import it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .broker import BrokerSettings, PublishSettings
from .capacity import CapacitySettings
from .features import FeatureSettings
from .history import HistorySettings
from .hub import HubSettings
from .logs import LogFormat

__all__ = ["ServerSettings", "Settings"]


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
    # A full garbage collection only once Python's memory (objects alive, or garbage) has grown
    # by this percentage since the last one, like Go's GOGC (gc_pacing.py); 0 leaves CPython's
    # own schedule, under which a collection can stall every connection at any moment.
    gc_growth_percent: float = Field(default=100.0, ge=0)
    # Log every garbage collection with its generation and pause (gc_pacing.py): a diagnostic.
    gc_log: bool = False
    # uvicorn's event loop and HTTP parser; "auto" takes uvloop and httptools when installed.
    loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    http: Literal["auto", "h11", "httptools"] = "auto"


class Settings(FeatureSettings):
    """All settings: the core's groups, and the chosen features' (features.py); each group
    reads its own environment variables when created."""

    server: ServerSettings = Field(default_factory=ServerSettings)
    hub: HubSettings = Field(default_factory=HubSettings)
    capacity: CapacitySettings = Field(default_factory=CapacitySettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    publish: PublishSettings = Field(default_factory=PublishSettings)
    history: HistorySettings = Field(default_factory=HistorySettings)
