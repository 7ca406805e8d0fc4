"""The Broker: where a published frame goes before it reaches the members of a room.

The hub only knows this process's connections. A broker decides how a frame published here
reaches every member of the room, wherever they are connected. `LocalBroker`, the default and
the test double, hands it straight to the hub: one process is the whole world.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import time
from collections.abc import Callable, Mapping

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .history import History, HistorySettings, LocalHistory
from .hub import Hub
from .protocol import ServiceError, encode, with_id

__all__ = [
    "MEMORY",
    "AlreadyPublished",
    "Broker",
    "BrokerErrorCode",
    "BrokerFactory",
    "BrokerSettings",
    "BrokerUnavailable",
    "LocalBroker",
    "PublishOutcomeUnknown",
    "PublishSettings",
    "RecentKeys",
    "Sent",
    "Stamp",
    "broker_scheme",
    "open_broker",
    "resync_frame",
]

# What became of a publish: the message's event id (None when messages get none), or
# BrokerUnavailable, PublishOutcomeUnknown or AlreadyPublished.
Sent = asyncio.Future[str | None]
# Records a frame as a room's newest event and returns its id (the history's `append`).
Stamp = Callable[[str, str], str]


class BrokerSettings(BaseSettings):
    """Which broker carries the messages, as a URL."""

    model_config = SettingsConfigDict(env_prefix="BROKER_", env_file=".env", extra="ignore")

    # `memory://` (this process only) or a scheme a feature provides (`redis://host:6379/0`);
    # unset: the provided broker with its own settings (REDIS_URL), else `memory://`.
    url: str = ""


# The built-in broker's URL: this process only, no server.
MEMORY = "memory://"


class PublishSettings(BaseSettings):
    """Idempotent publishing: a publisher's own `key` makes a retry safe."""

    model_config = SettingsConfigDict(env_prefix="PUBLISH_", env_file=".env", extra="ignore")

    # How long a publish key is remembered: a publish with the key of one published this long
    # ago or less (same room, same sender) is not delivered again.
    key_window_seconds: int = Field(default=300, ge=1)
    # Without Redis, the keys this process remembers at most; past this the oldest are
    # forgotten before their window ends (memory stays bounded whatever clients send).
    max_keys: int = Field(default=100_000, ge=1)


class BrokerErrorCode(enum.StrEnum):
    # Not sent: nobody got the message; publishing it again is safe.
    BROKER_UNAVAILABLE = "broker_unavailable"
    # Sent, but Redis did not answer in time: it may or may not be delivered (it may still
    # be, when Redis resumes); publish it again with the same `key` to be sure it is, once.
    PUBLISH_OUTCOME_UNKNOWN = "publish_outcome_unknown"
    # A message with this `key` was published already (within the key window): not again.
    ALREADY_PUBLISHED = "already_published"


class BrokerUnavailable(ServiceError):
    """A publish that was not handed on: nobody got it. The sender gets an error frame."""

    def __init__(self, detail: str) -> None:
        super().__init__(BrokerErrorCode.BROKER_UNAVAILABLE, detail)


class PublishOutcomeUnknown(ServiceError):
    """A publish that went out to Redis with no answer in time: it may have been delivered."""

    def __init__(self, detail: str) -> None:
        super().__init__(BrokerErrorCode.PUBLISH_OUTCOME_UNKNOWN, detail)


class AlreadyPublished(ServiceError):
    """A publish whose key was used for a message published before: it is not sent again."""

    def __init__(self, event_id: str | None) -> None:
        known = f" as event {event_id}" if event_id else ""
        super().__init__(
            BrokerErrorCode.ALREADY_PUBLISHED,
            f"a message with this key was published already{known}; not sent again",
        )
        self.event_id = event_id


def resync_frame(rooms: list[str]) -> str:
    """Tells the members of `rooms` that messages may have passed them by (a broker outage
    the history cannot cover): they should reload the rooms' state."""
    detail = "messages may have been missed during a broker outage: reload the state of these rooms"
    return encode({"type": "resync", "rooms": rooms, "detail": detail})


class RecentKeys:
    """The publish keys of the last `window` seconds, in memory, at most `limit` of them.

    One window for every key, so insertion order is expiry order: the oldest are first.
    """

    def __init__(self, window: float, limit: int) -> None:
        self.window = window
        self.limit = limit
        self._keys: dict[tuple[str, str], tuple[float, str | None]] = {}

    def earlier(self, room: str, key: str) -> tuple[bool, str | None]:
        """Whether `key` was used in `room` within the window, and the event id it got."""
        self._forget_expired()
        seen = self._keys.get((room, key))
        return (False, None) if seen is None else (True, seen[1])

    def add(self, room: str, key: str, event_id: str | None) -> None:
        self._keys[(room, key)] = (time.monotonic() + self.window, event_id)
        while len(self._keys) > self.limit:
            del self._keys[next(iter(self._keys))]

    def _forget_expired(self) -> None:
        now = time.monotonic()
        while self._keys:
            oldest = next(iter(self._keys))
            if self._keys[oldest][0] > now:
                return
            del self._keys[oldest]


class Broker(abc.ABC):
    """Carries published frames to the members of a room, in this process and in others.

    The hub calls `subscribe` when a room gets its first member in this process and
    `unsubscribe` when its last one leaves; both are synchronous because the hub is, so an
    implementation that needs I/O queues the change and applies it in order. A frame arrives
    already encoded, and is handed to `Hub.deliver` as is, exactly once per process.

    A broker that can lose frames (cut off from a server) never does so silently: once back,
    it delivers what the history recorded meanwhile, in order and once each, or, where the
    history cannot cover the gap, a `resync_frame` to the room. Both reach every member
    through the hub, so WebSocket clients and SSE streams recover the same way.
    """

    # Names it in readiness checks (`/readyz`) and in BROKER_URL's scheme.
    name = "memory"

    async def start(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Begin background work; must not wait for an external server to be reachable."""

    @abc.abstractmethod
    def publish(self, room: str, frame: str, key: str | None = None) -> Sent:
        """Deliver `frame` to every member of `room`, in every process, exactly once each.

        Returns at once, without waiting for the delivery, so that a sender's next message is
        handled while this one travels; frames reach each member in the order they were
        published. The future says how it went: BrokerUnavailable if the frame was not handed
        on (nothing was delivered), PublishOutcomeUnknown if it went out but its fate is not
        known (it may be delivered, even later). With a `key` (the publisher's idempotency key,
        already scoped to its sender), a frame whose key was published in `room` within the
        key window is not delivered again: the future fails with AlreadyPublished.
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

    With a `stamp` (the history's), each frame is first recorded and gets its event id,
    which travels in the frame as `"id"`, so WebSocket and SSE subscribers see the same id.
    """

    def __init__(
        self, hub: Hub, stamp: Stamp | None = None, publish: PublishSettings | None = None
    ) -> None:
        self.hub = hub
        self.stamp = stamp
        publish = publish or PublishSettings()
        self.keys = RecentKeys(publish.key_window_seconds, publish.max_keys)

    def publish(self, room: str, frame: str, key: str | None = None) -> Sent:
        sent: Sent = asyncio.get_running_loop().create_future()
        if key is not None:
            published, earlier_id = self.keys.earlier(room, key)
            if published:
                sent.set_exception(AlreadyPublished(earlier_id))
                return sent
        event_id = None
        if self.stamp is not None:
            event_id = self.stamp(room, frame)
            frame = with_id(frame, event_id)
        if key is not None:
            self.keys.add(room, key, event_id)
        self.hub.deliver(room, frame, event_id)
        sent.set_result(event_id)
        return sent

    def subscribe(self, room: str) -> None:
        pass

    def unsubscribe(self, room: str) -> None:
        pass


# Builds a broker for a URL, with a history of each room's recent messages, and returns it with
# the history it records into.
BrokerFactory = Callable[
    [str | None, Hub, HistorySettings, PublishSettings], tuple[Broker, History]
]


def open_memory_broker(
    url: str | None, hub: Hub, history: HistorySettings, publish: PublishSettings
) -> tuple[Broker, History]:
    # Every message gets its event id once, as it is recorded, before any subscriber sees it.
    local = LocalHistory(history.size, history.ttl_seconds)
    return LocalBroker(hub, stamp=local.append, publish=publish), local


def open_broker(
    url: str,
    factories: Mapping[str, BrokerFactory],
    hub: Hub,
    history: HistorySettings,
    publish: PublishSettings,
) -> tuple[Broker, History]:
    """The broker `url` names (empty: the first of `factories` with its own settings, else
    memory), and its history."""
    if not url:
        for factory in factories.values():
            return factory(None, hub, history, publish)
        url = MEMORY
    scheme = url.partition("://")[0]
    if scheme == "memory":
        return open_memory_broker(url, hub, history, publish)
    if scheme not in factories:
        known = ", ".join(f"{name}://" for name in ("memory", *factories))
        raise ValueError(f"BROKER_URL: no broker for {scheme}:// in this service (it has {known})")
    return factories[scheme](url, hub, history, publish)


def broker_scheme(url: str, provided: bool) -> str:
    """The scheme of the broker `url` names, as `open_broker` picks it, `provided` saying
    whether a feature provides a broker (an empty URL then names it)."""
    if not url:
        return "redis" if provided else "memory"
    return url.partition("://")[0]
