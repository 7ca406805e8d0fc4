"""The Broker: where a published frame goes before it reaches the members of a room.

The hub only knows this process's connections. A broker decides how a frame published here
reaches every member of the room, wherever they are connected. `LocalBroker`, the default and
the test double, hands it straight to the hub: one process is the whole world.
"""

from __future__ import annotations

import abc
import asyncio
import enum
from collections.abc import Callable

from .hub import Hub
from .protocol import ProtocolError, with_id

__all__ = ["Broker", "BrokerErrorCode", "BrokerUnavailable", "LocalBroker", "Sent", "Stamp"]

# What became of a publish: the message's event id (None when messages get none), or
# BrokerUnavailable.
Sent = asyncio.Future[str | None]
# Records a frame as a room's newest event and returns its id (the SSE feature's history).
Stamp = Callable[[str, str], str]


class BrokerErrorCode(enum.StrEnum):
    BROKER_UNAVAILABLE = "broker_unavailable"


class BrokerUnavailable(ProtocolError):
    """A publish that could not be handed on: the sender gets an error frame, never silence."""

    def __init__(self, detail: str) -> None:
        super().__init__(BrokerErrorCode.BROKER_UNAVAILABLE, detail)


class Broker(abc.ABC):
    """Carries published frames to the members of a room, in this process and in others.

    The hub calls `subscribe` when a room gets its first member in this process and
    `unsubscribe` when its last one leaves; both are synchronous because the hub is, so an
    implementation that needs I/O queues the change and applies it in order. A frame arrives
    already encoded, and is handed to `Hub.deliver` as is, exactly once per process.
    """

    async def start(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Begin background work; must not wait for an external server to be reachable."""

    @abc.abstractmethod
    def publish(self, room: str, frame: str) -> Sent:
        """Deliver `frame` to every member of `room`, in every process, exactly once each.

        Returns at once, without waiting for the delivery, so that a sender's next message is
        handled while this one travels; frames reach each member in the order they were
        published. The future says how it went: BrokerUnavailable if the frame could not be
        handed on (nothing was delivered then).
        """

    @abc.abstractmethod
    def subscribe(self, room: str) -> None:
        """From now on, deliver `room`'s frames to this process's hub."""

    @abc.abstractmethod
    def unsubscribe(self, room: str) -> None:
        """Stop delivering `room`'s frames to this process."""

    async def listening(self, room: str) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Return once frames published to `room` from now on reach this process.

        A subscriber that reads a room's history after joining it (SSE resume) waits for this
        first, so that no message falls between the history and the live frames.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Stop background work and release connections."""

    @property
    def ready(self) -> bool:
        """Whether published frames can be delivered now; readiness reports it."""
        return True


class LocalBroker(Broker):
    """This process only: a publish is a delivery to the hub, done when `publish` returns.

    With a `stamp` (the SSE history), each frame is first recorded and gets its event id,
    which travels in the frame as `"id"`, so WebSocket and SSE subscribers see the same id.
    """

    def __init__(self, hub: Hub, stamp: Stamp | None = None) -> None:
        self.hub = hub
        self.stamp = stamp

    def publish(self, room: str, frame: str) -> Sent:
        event_id = None
        if self.stamp is not None:
            event_id = self.stamp(room, frame)
            frame = with_id(frame, event_id)
        self.hub.deliver(room, frame)
        sent: Sent = asyncio.get_running_loop().create_future()
        sent.set_result(event_id)
        return sent

    def subscribe(self, room: str) -> None:
        pass

    def unsubscribe(self, room: str) -> None:
        pass
