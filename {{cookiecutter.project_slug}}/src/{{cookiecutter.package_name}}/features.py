"""The features this project was generated with: the one module of the service the template
writes. A feature is an import, its settings group, what it provides and its entry in
`chosen` below; everything else (app.py, settings.py, __main__.py) iterates over them.
"""

from __future__ import annotations

import pydantic
{{ "" }}
{%- if cookiecutter.auth == "query_token" %}
from .auth_token import TokenAuth, TokenSettings, token_command
{%- elif cookiecutter.auth == "cookie" %}
from .auth_cookie import CookieAuth, CookieSettings
{%- endif %}
from .commands import Command
{%- if not cookiecutter.use_rooms %}
from .endpoint import DefaultRoom
{%- endif %}
from .feature import Core, Feature, Provided
{%- if cookiecutter.use_heartbeats %}
from .heartbeat import Heartbeat, HeartbeatSettings
{%- endif %}
from .presence import Presence, PresenceSettings
{%- if cookiecutter.use_redis %}
from .presence_redis import redis_presence
from .redis_broker import RedisSettings, redis_brokers
{%- endif %}
{%- if cookiecutter.use_rooms %}
from .rooms import RoomNames, Rooms, RoomSettings
{%- endif %}
{%- if cookiecutter.use_sse %}
from .sse import ServerSentEvents, SseSettings
{%- endif %}

__all__ = ["COMMANDS", "FeatureSettings", "chosen", "provided"]


class FeatureSettings(pydantic.BaseModel):
    """The settings group of each chosen feature; each reads its own environment variables."""

    presence: PresenceSettings = pydantic.Field(default_factory=PresenceSettings)
{%- if cookiecutter.use_rooms %}
    rooms: RoomSettings = pydantic.Field(default_factory=RoomSettings)
{%- endif %}
{%- if cookiecutter.use_redis %}
    redis: RedisSettings = pydantic.Field(default_factory=RedisSettings)
{%- endif %}
{%- if cookiecutter.use_heartbeats %}
    heartbeat: HeartbeatSettings = pydantic.Field(default_factory=HeartbeatSettings)
{%- endif %}
{%- if cookiecutter.auth == "query_token" %}
    auth: TokenSettings = pydantic.Field(default_factory=TokenSettings)
{%- elif cookiecutter.auth == "cookie" %}
    auth: CookieSettings = pydantic.Field(default_factory=CookieSettings)
{%- endif %}
{%- if cookiecutter.use_sse %}
    sse: SseSettings = pydantic.Field(default_factory=SseSettings)
{%- endif %}


def provided(settings: FeatureSettings) -> Provided:
    """What the chosen features lend the core, before any of them is built."""
    return Provided(
        # What each chosen feature provides; the defaults stand for the others.
{%- if cookiecutter.auth == "query_token" %}
        identity=TokenAuth(settings.auth),
{%- elif cookiecutter.auth == "cookie" %}
        identity=CookieAuth(settings.auth),
{%- endif %}
{%- if cookiecutter.use_rooms %}
        check_room=RoomNames(settings.rooms).check,
{%- endif %}
{%- if cookiecutter.use_redis %}
        brokers=redis_brokers(settings.redis),
{%- endif %}
    )


def chosen(core: Core, settings: FeatureSettings) -> list[Feature]:
    """The features built on the core, in the order the app starts them (stopped in reverse);
    the identity feature, if any, comes first (app.py)."""
    return [
        # One entry per chosen feature. Presence is in every project: it is first, so that it
        # stops last and hears every connection's leave.
{%- if cookiecutter.use_redis %}
        Presence.on(core, settings.presence, store=redis_presence(core.broker, settings.presence)),
{%- else %}
        Presence.on(core, settings.presence),
{%- endif %}
{%- if cookiecutter.use_rooms %}
        Rooms(core, settings.rooms),
{%- else %}
        DefaultRoom(core),
{%- endif %}
{%- if cookiecutter.use_heartbeats %}
        Heartbeat(core.hub, settings.heartbeat),
{%- endif %}
{%- if cookiecutter.use_sse %}
        ServerSentEvents(core, settings.sse),
{%- endif %}
    ]


# Commands of `python -m <package>` besides `serve` (__main__.py).
COMMANDS: tuple[Command[FeatureSettings], ...] = (
    # One entry per command a chosen feature adds.
{%- if cookiecutter.auth == "query_token" %}
    token_command(lambda settings: settings.auth),
{%- endif %}
)
