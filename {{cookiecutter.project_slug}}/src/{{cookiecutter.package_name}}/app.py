"""The app factory: builds the hub, the protocol and the routes from the settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette import status

from . import __version__
from .about import DESCRIPTION, NAME
{%- if cookiecutter.auth == "query_token" %}
from .auth_token import TokenAuth
{%- elif cookiecutter.auth == "cookie" %}
from .auth_cookie import CookieAuth
{%- endif %}
{%- if cookiecutter.use_redis %}
from .broker import Broker
{%- else %}
from .broker import Broker, LocalBroker
{%- endif %}
from .capacity import Capacity
from .demo import mount_demo
from .endpoint import Endpoint, Identify, OnOpen, RealtimeApp, anonymous
from .gc_pacing import GcPacer
from .health import Readiness, health_router
{%- if cookiecutter.use_heartbeats %}
from .heartbeat import Heartbeat
{%- endif %}
from .hub import Hub
from .log_redaction import install_log_filters
from .metrics import counting_rooms, metrics_router
from .permissions import Authorize, authorize, authorizing
from .presence import Presence
{%- if cookiecutter.use_redis %}
from .presence_redis import RedisPresence
{%- endif %}
from .protocol import Protocol, Publish
from .publishing import Publisher
{%- if cookiecutter.use_redis %}
from .redis_broker import RedisBroker
{%- endif %}
{%- if cookiecutter.use_rooms %}
from .rooms import Rooms
{%- endif %}
from .settings import Settings
{%- if cookiecutter.use_sse and cookiecutter.use_redis %}
from .sse import History, ServerSentEvents, http_user
from .sse_redis import RedisHistory
{%- elif cookiecutter.use_sse %}
from .sse import History, LocalHistory, ServerSentEvents, http_user
{%- endif %}

__all__ = ["create_app"]


def create_app(settings: Settings | None = None, *, authorize: Authorize = authorize) -> FastAPI:
    """The app; `authorize` decides the rooms each client may join and publish to
    (permissions.py: by default, those its credentials name)."""
    settings = settings or Settings()
    # Here, not in `serve`: however the app is run (uvicorn's command line too), no query
    # string (a token) reaches uvicorn's log.
    install_log_filters()
    hub = Hub()
    readiness = Readiness()
    capacity = Capacity(hub, settings.capacity)
    readiness.add_check("capacity", capacity.has_room)
{%- if cookiecutter.use_sse and cookiecutter.use_redis %}
    # Every message gets its event id once, as Redis records it in the room's history while
    # publishing it, before any subscriber sees it.
    broker: Broker = RedisBroker(
        hub, settings.redis, history_size=settings.sse.history_size, publish=settings.publish
    )
    history: History = RedisHistory(settings.redis)
{%- elif cookiecutter.use_redis %}
    broker: Broker = RedisBroker(hub, settings.redis, publish=settings.publish)
{%- elif cookiecutter.use_sse %}
    # Every message gets its event id once, as it is recorded, before any subscriber sees it.
    local_history = LocalHistory(settings.sse.history_size)
    broker: Broker = LocalBroker(hub, stamp=local_history.append, publish=settings.publish)
    history: History = local_history
{%- else %}
    broker: Broker = LocalBroker(hub, publish=settings.publish)
{%- endif %}
{%- if cookiecutter.use_redis %}
    readiness.add_check("redis", lambda: broker.ready)
{%- endif %}
    hub.on_room_opened, hub.on_room_closed = counting_rooms(broker.subscribe, broker.unsubscribe)
    protocol = Protocol()
    publisher = Publisher(broker)
    protocol.on("publish", Publish, publisher.handle)
    on_open: OnOpen | None = None
{%- if cookiecutter.use_rooms %}
    rooms = Rooms(hub, settings.rooms)
    rooms.register(protocol)
    on_open = rooms.on_open
{%- endif %}
{%- if cookiecutter.use_sse %}
    sse_settings = settings.sse
{%- endif %}
{%- if cookiecutter.use_sse and cookiecutter.use_heartbeats %}
    # One rhythm for every client: SSE comment pings follow the heartbeat's interval.
    sse_settings = sse_settings.model_copy(
        update={"ping_interval_seconds": settings.heartbeat.interval_seconds}
    )
{%- endif %}
{%- if cookiecutter.use_sse %}
    sse = ServerSentEvents(
        hub, publisher, history, sse_settings, settings.hub, listening=broker.listening
    )
{%- endif %}
{%- if cookiecutter.use_sse and cookiecutter.use_rooms %}
    sse.check_room = rooms.check_name
{%- endif %}
    welcome: dict[str, object] = {}
{%- if cookiecutter.use_heartbeats %}
    heartbeat = Heartbeat(hub, settings.heartbeat)
    heartbeat.register(protocol)
    welcome |= heartbeat.welcome
{%- endif %}
    identify: Identify = anonymous
{%- if cookiecutter.auth == "query_token" %}
    auth = TokenAuth(settings.auth)
    identify = auth.identify
{%- elif cookiecutter.auth == "cookie" %}
    auth = CookieAuth(settings.auth)
    identify = auth.identify
{%- endif %}
    authorized = authorizing(identify, authorize)
    identify = capacity.guard(authorized)
{%- if cookiecutter.use_sse %}
    sse.identify = http_user(identify)
{%- endif %}
    presence = Presence(
        hub,
        settings.presence,
        broker,
{%- if cookiecutter.use_redis %}
        store=RedisPresence(settings.redis, settings.presence.refresh_seconds),
{%- endif %}
        # `GET /presence` is one short request: no capacity guard, as for a publish.
        identify=authorized,
{%- if cookiecutter.auth != "none" %}
        anonymous_users=False,
{%- endif %}
{%- if cookiecutter.use_rooms %}
        check_room=rooms.check_name,
{%- endif %}
    )
    presence.register(protocol)

    gc_pacer = GcPacer(settings.server.gc_full_collect_seconds, log=settings.server.gc_log)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        capacity.start()
        gc_pacer.start()
        await broker.start()
        await presence.start()
{%- if cookiecutter.use_heartbeats %}
        heartbeat.start()
{%- endif %}
{%- if cookiecutter.use_sse %}
        sse.watch_exit_signals()
{%- endif %}
        yield
        await gc_pacer.stop()
        capacity.stop()
{%- if cookiecutter.use_sse %}
        sse.unwatch_exit_signals()
        sse.close_all()
{%- endif %}
{%- if cookiecutter.use_heartbeats %}
        await heartbeat.stop()
{%- endif %}
        # uvicorn has already closed its sockets with 1012; this covers other servers.
        readiness.shutting_down = True
        hub.close_all(status.WS_1001_GOING_AWAY, "server shutting down")
        await presence.stop()
        await broker.close()
{%- if cookiecutter.use_sse %}
        await history.close()
{%- endif %}

    app = RealtimeApp(
        title=NAME,
        description=DESCRIPTION,
        version=__version__,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.hub = hub
    app.state.broker = broker
    app.state.protocol = protocol
    app.state.readiness = readiness
    endpoint = Endpoint(
        hub, protocol, settings.hub, identify=identify, on_open=on_open, welcome=welcome
    )
    app.add_api_websocket_route("/ws", endpoint)
{%- if cookiecutter.auth != "none" %}
    app.include_router(auth.router())
{%- endif %}
    app.include_router(health_router(readiness, hub))
    if settings.server.metrics:
        app.include_router(metrics_router())
{%- if cookiecutter.use_sse %}
    app.state.sse = sse
    app.include_router(sse.router())
{%- endif %}
    app.state.presence = presence
    app.include_router(presence.router())
    mount_demo(app)
    return app
