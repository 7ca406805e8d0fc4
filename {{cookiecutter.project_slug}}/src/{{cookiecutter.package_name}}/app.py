"""The app factory: builds the core from the settings, then the chosen features on it.

Plain Python over the list of features (features.py): each is registered, routed, started in
order and stopped in reverse; nothing here knows which features were chosen.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI, WebSocket
from starlette import status

from . import __version__
from .about import DESCRIPTION, NAME
from .broker import open_broker
from .capacity import Capacity
from .demo import mount_demo
from .endpoint import Endpoint, RealtimeApp
from .feature import Core, Feature
from .features import chosen, provided
from .gc_pacing import GcPacer
from .health import Readiness, health_router
from .history import Recovery
from .hub import Connection, Hub
from .identity import anonymous
from .log_redaction import install_log_filters
from .metrics import counting_rooms, metrics_router
from .permissions import Authorize, authorize, authorizing
from .protocol import Protocol, Publish
from .publishing import Publisher
from .settings import Settings

__all__ = ["create_app"]


def create_app(settings: Settings | None = None, *, authorize: Authorize = authorize) -> FastAPI:
    """The app; `authorize` decides the rooms each client may join and publish to
    (permissions.py: by default, those its credentials name)."""
    settings = settings or Settings()
    # Here, not in `serve`: however the app is run (uvicorn's command line too), no query
    # string (a token) reaches uvicorn's log.
    install_log_filters()
    lent = provided(settings)
    hub = Hub()
    readiness = Readiness()
    capacity = Capacity(hub, settings.capacity)
    readiness.add_check("capacity", capacity.has_room)
    broker, history = open_broker(
        settings.broker.url, lent.brokers, hub, settings.history, settings.publish
    )
    if broker.name != "memory":
        readiness.add_check(broker.name, lambda: broker.ready)
    hub.on_room_opened, hub.on_room_closed = counting_rooms(broker.subscribe, broker.unsubscribe)
    protocol = Protocol()
    publisher = Publisher(broker)
    protocol.on("publish", Publish, publisher.handle)
    identify = lent.identity.identify if lent.identity is not None else anonymous
    authorized = authorizing(identify, authorize)
    core = Core(
        hub=hub,
        hub_settings=settings.hub,
        protocol=protocol,
        broker=broker,
        history=history,
        recovery=Recovery(hub, history, broker.listening),
        publisher=publisher,
        readiness=readiness,
        identify=capacity.guard(authorized),
        identify_request=authorized,
        check_room=lent.check_room,
        anonymous=lent.identity is None,
    )
    features: list[Feature] = [
        *([lent.identity] if lent.identity is not None else []),
        *chosen(core, settings),
    ]
    welcome: dict[str, object] = {}
    for feature in features:
        feature.register(protocol)
        welcome |= feature.welcome()

    def on_open(connection: Connection, websocket: WebSocket) -> None:
        for feature in features:
            feature.on_open(connection, websocket)

    gc_pacer = GcPacer(settings.server.gc_growth_percent, log=settings.server.gc_log)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        capacity.start()
        gc_pacer.start()
        await broker.start()
        async with AsyncExitStack() as started:
            for feature in features:
                await feature.start()
                started.push_async_callback(feature.stop)
            yield
            await gc_pacer.stop()
            capacity.stop()
        # The features stopped, in reverse. uvicorn has already closed its sockets with 1012;
        # this covers other servers.
        readiness.shutting_down = True
        hub.close_all(status.WS_1001_GOING_AWAY, "server shutting down")
        await broker.close()
        await history.close()

    app = RealtimeApp(
        title=NAME,
        description=DESCRIPTION,
        version=__version__,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.core = core
    app.state.hub = hub
    app.state.broker = broker
    app.state.protocol = protocol
    app.state.readiness = readiness
    app.state.features = features
    endpoint = Endpoint(
        hub, protocol, settings.hub, identify=core.identify, on_open=on_open, welcome=welcome
    )
    app.add_api_websocket_route("/ws", endpoint)
    for feature in features:
        if (router := feature.router()) is not None:
            app.include_router(router)
    app.include_router(health_router(readiness, hub))
    if settings.server.metrics:
        app.include_router(metrics_router())
    mount_demo(app, [feature.name for feature in features])
    return app
