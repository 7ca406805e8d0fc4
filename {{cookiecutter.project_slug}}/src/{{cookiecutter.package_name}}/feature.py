"""The shape of a feature, and the core every feature is built with.

A feature (rooms, heartbeats, SSE, an auth scheme, ...) is an object with the hooks of
`Feature`, each optional. The app (app.py) calls them for every chosen feature (features.py),
in the order listed: `register` and `router` as it is built, `start` in order and `stop` in
reverse around its lifespan, `on_open` and `welcome` for every WebSocket connection.

What features lend each other is explicit: before any feature is built, the chosen features
say what they provide (`Provided`: who a client is, which room names are valid, which
brokers there are), and the `Core` built from it is handed to every feature's constructor.
Nothing is patched onto a feature after it is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from fastapi import APIRouter
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket

from .broker import Broker, BrokerFactory
from .health import Readiness
from .history import History, Recovery
from .hub import Connection, Hub, HubSettings
from .identity import Identify, Identity, anonymous
from .protocol import CheckRoom, Protocol, only_the_default_room
from .publishing import Publisher

__all__ = ["Core", "Feature", "IdentityFeature", "Provided"]


class Feature:
    """The hooks the app calls; a feature overrides those it needs, the rest do nothing."""

    # The answer that chose it (`rooms`, `sse`, `query_token`...): the demo page shows the
    # controls of the features it finds in `/demo.json` (demo.py).
    name: ClassVar[str]

    def register(self, protocol: Protocol) -> None:
        """Add the message types it handles (`protocol.on`)."""

    def router(self) -> APIRouter | None:
        """Its HTTP routes, if any."""
        return None

    async def start(self) -> None:
        """Begin background work, once the app starts (before it serves)."""

    async def stop(self) -> None:
        """End background work and close what it opened, once the app stops."""

    def on_open(self, connection: Connection, websocket: WebSocket) -> None:
        """A WebSocket connection was accepted (before its `welcome`). Exceptions close it
        with 1011; a refusal of one of its requests is an error frame offered to it."""

    def welcome(self) -> Mapping[str, object]:
        """Fields it adds to every `welcome` frame, so a client knows what to expect."""
        return {}


class IdentityFeature(Feature):
    """A feature that says who a client is (an auth scheme): its `identify` checks every
    handshake, WebSocket and HTTP alike, and may refuse it."""

    async def identify(self, connection: HTTPConnection) -> Identity:
        return await anonymous(connection)


@dataclass(frozen=True, slots=True)
class Provided:
    """What the chosen features provide to the core, known from their settings alone."""

    # Who a client is; None: everyone is `anonymous`.
    identity: IdentityFeature | None = None
    # Which room names are valid; without the rooms feature, the default room only.
    check_room: CheckRoom = only_the_default_room
    # Broker implementations by URL scheme (`redis`), besides the built-in `memory`.
    brokers: Mapping[str, BrokerFactory] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Core:
    """What every feature is built with."""

    hub: Hub
    hub_settings: HubSettings
    protocol: Protocol
    broker: Broker
    # The broker's history of every room (history.py), and how a client catches up from it:
    # over WebSocket (`since`) as over SSE (`Last-Event-ID`).
    history: History
    recovery: Recovery
    publisher: Publisher
    readiness: Readiness
    # The handshake check of a connection (WebSocket, SSE stream): the identity feature's,
    # with the permissions and capacity rules.
    identify: Identify
    # The same for one short request (a publish, a presence query): no capacity rule.
    identify_request: Identify
    check_room: CheckRoom
    # No identity feature: every client is anonymous (presence counts each connection apart).
    anonymous: bool
