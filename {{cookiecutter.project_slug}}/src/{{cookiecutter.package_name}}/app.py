"""The app factory: builds the hub, the protocol and the routes from the settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette import status

from . import __version__
{%- if cookiecutter.use_redis %}
from .broker import Broker
{%- else %}
from .broker import Broker, LocalBroker
{%- endif %}
from .demo import mount_demo
from .endpoint import Endpoint, OnOpen
from .health import Readiness, health_router
{%- if cookiecutter.use_heartbeats %}
from .heartbeat import Heartbeat
{%- endif %}
from .hub import Hub
from .protocol import Protocol, Publish
from .publishing import Publisher
{%- if cookiecutter.use_redis %}
from .redis_broker import RedisBroker
{%- endif %}
{%- if cookiecutter.use_rooms %}
from .rooms import Rooms
{%- endif %}
from .settings import Settings

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    hub = Hub()
    readiness = Readiness()
{%- if cookiecutter.use_redis %}
    broker: Broker = RedisBroker(hub, settings.redis)
    readiness.add_check("redis", lambda: broker.ready)
{%- else %}
    broker: Broker = LocalBroker(hub)
{%- endif %}
    hub.on_room_opened = broker.subscribe
    hub.on_room_closed = broker.unsubscribe
    protocol = Protocol()
    protocol.on("publish", Publish, Publisher(broker).handle)
    on_open: OnOpen | None = None
{%- if cookiecutter.use_rooms %}
    rooms = Rooms(hub, settings.rooms)
    rooms.register(protocol)
    on_open = rooms.on_open
{%- endif %}
    welcome: dict[str, object] = {}
{%- if cookiecutter.use_heartbeats %}
    heartbeat = Heartbeat(hub, settings.heartbeat)
    heartbeat.register(protocol)
    welcome |= heartbeat.welcome
{%- endif %}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await broker.start()
{%- if cookiecutter.use_heartbeats %}
        heartbeat.start()
{%- endif %}
        yield
{%- if cookiecutter.use_heartbeats %}
        await heartbeat.stop()
{%- endif %}
        # uvicorn has already closed its sockets with 1012; this covers other servers.
        readiness.shutting_down = True
        hub.close_all(status.WS_1001_GOING_AWAY, "server shutting down")
        await broker.close()

    app = FastAPI(title="{{ cookiecutter.project_name }}", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.hub = hub
    app.state.broker = broker
    app.state.protocol = protocol
    app.state.readiness = readiness
    app.add_api_websocket_route(
        "/ws", Endpoint(hub, protocol, settings.hub, on_open=on_open, welcome=welcome)
    )
    app.include_router(health_router(readiness, hub))
    mount_demo(app)
    return app
