"""Redis fanout: rooms shared by every process and host connected to one Redis, over pub/sub.

Each room is one Redis channel (`REDIS_CHANNEL_PREFIX` + room name). A process subscribes to a
room's channel only while it has members of that room, over one listener connection, and hands
each message it receives (the frame exactly as clients get it, encoded once by the publisher)
to its hub. A process that publishes does not deliver locally: its own members get the frame
from Redis like everyone else's, so every member gets it once, in the one order Redis gives the
channel.

The listener survives Redis restarts: it reconnects with capped exponential backoff and jitter,
subscribes again to every room that has members here, and `ready` is false meanwhile. Pub/sub
keeps nothing: a message published while this process is cut off from Redis never reaches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .broker import Broker, BrokerUnavailable
from .hub import Hub

__all__ = ["RedisBroker", "RedisSettings"]

logger = logging.getLogger(__name__)


class RedisSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REDIS_", env_file=".env", extra="ignore")

    # redis:// or rediss:// (TLS), with a password and a database number if needed.
    url: str = "redis://127.0.0.1:6379/0"
    # Every room's channel is this prefix and the room name; services sharing one Redis need
    # different prefixes.
    channel_prefix: str = "rooms:"
    # The listener's reconnect delay doubles from min to max after each failed attempt, with
    # jitter, so that many processes do not all reconnect in the same instant.
    backoff_min_seconds: float = Field(default=0.2, gt=0)
    backoff_max_seconds: float = Field(default=5.0, gt=0)
    # How long a publish may wait for Redis (to answer, or to confirm a new subscription)
    # before the sender gets a `broker_unavailable` error.
    publish_timeout_seconds: float = Field(default=2.0, gt=0)

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, url: str) -> str:
        if urlsplit(url).scheme not in ("redis", "rediss"):
            raise ValueError("expected a redis:// or rediss:// URL")
        return url

    @model_validator(mode="after")
    def _backoff_bounds(self) -> RedisSettings:
        if self.backoff_min_seconds > self.backoff_max_seconds:
            raise ValueError("backoff_min_seconds must not exceed backoff_max_seconds")
        return self


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


class RedisBroker(Broker):
    """Publishes to Redis and listens, on one connection, to the channels of this process's
    rooms; see the module docstring for what it promises."""

    def __init__(self, hub: Hub, settings: RedisSettings) -> None:
        self.hub = hub
        self.settings = settings
        self._prefix = settings.channel_prefix
        # No retries inside redis-py: a failed publish is reported at once, and the listener
        # owns reconnecting, so that it can resubscribe and report readiness itself.
        self._redis = Redis.from_url(
            settings.url,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=settings.publish_timeout_seconds,
            socket_timeout=settings.publish_timeout_seconds,
            socket_keepalive=True,
        )
        # Rooms with members here, and the subscriptions Redis has confirmed on the current
        # listener connection.
        self._wanted: set[str] = set()
        self._confirmed: set[str] = set()
        self._confirmation: dict[str, asyncio.Event] = {}
        # Frames published here whose echo from Redis has not arrived yet, by room.
        self._echoes: dict[str, list[tuple[str, asyncio.Future[None]]]] = {}
        self._changed = asyncio.Event()
        self._connected = False
        self._first_attempt = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self._connected

    async def start(self) -> None:
        if self._listener is not None:
            raise RuntimeError(f"Expected no listener, got {self._listener!r}")
        self._listener = asyncio.create_task(self._listen(), name="redis-listener")
        # One attempt, so that a service whose Redis is up takes traffic as soon as it starts;
        # it starts either way, not ready, and keeps trying.
        await self._first_attempt.wait()

    async def publish(self, room: str, frame: str) -> None:
        if not self._connected:
            raise BrokerUnavailable(f"Redis at {redacted(self.settings.url)} is unreachable")
        if room not in self._wanted:
            # No member here (a publish over HTTP): nobody here waits to hear it back.
            try:
                await self._redis.publish(self._prefix + room, frame)
            except (RedisError, OSError) as error:
                raise BrokerUnavailable(f"Redis refused the message: {error}") from None
            return
        # This process must hear the channel before publishing to it, or the sender would miss
        # its own message: a new subscription is confirmed on the listener connection.
        if room not in self._confirmed:
            event = self._confirmation.setdefault(room, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), self.settings.publish_timeout_seconds)
            except TimeoutError:
                raise BrokerUnavailable(f"Redis did not confirm room {room!r}") from None
        # Returning once the frame is back from Redis, in this process's hub, keeps the local
        # shape: a sender's next frame is handled after its previous message was delivered.
        echo = (frame, asyncio.get_running_loop().create_future())
        waiting = self._echoes.setdefault(room, [])
        waiting.append(echo)
        try:
            await self._redis.publish(self._prefix + room, frame)
            # Past the timeout Redis has the message but this process has not heard it back
            # (the listener is reconnecting): it was published all the same.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(echo[1], self.settings.publish_timeout_seconds)
        except (RedisError, OSError) as error:
            raise BrokerUnavailable(f"Redis refused the message: {error}") from None
        finally:
            if echo in waiting:
                waiting.remove(echo)
            if not waiting:
                self._echoes.pop(room, None)

    async def listening(self, room: str) -> None:
        if room in self._confirmed:
            return
        event = self._confirmation.setdefault(room, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), self.settings.publish_timeout_seconds)
        except TimeoutError:
            raise BrokerUnavailable(f"Redis did not confirm room {room!r}") from None

    def subscribe(self, room: str) -> None:
        self._wanted.add(room)
        self._changed.set()

    def unsubscribe(self, room: str) -> None:
        self._wanted.discard(room)
        self._changed.set()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await self._redis.aclose()

    async def _listen(self) -> None:
        """Hold one listener connection, forever: reconnect after every failure."""
        failures = 0
        while True:
            pubsub = self._redis.pubsub()
            delay = self._backoff(failures)
            try:
                await pubsub.connect()  # type: ignore[no-untyped-call]
                failures = 0
                await self._serve(pubsub)
            except (RedisError, OSError) as error:
                self._first_attempt.set()
                delay = self._backoff(failures)
                logger.warning(
                    "redis unreachable at %s: %s; retrying in %.1fs",
                    redacted(self.settings.url),
                    error or type(error).__name__,
                    delay,
                )
            except Exception:
                self._first_attempt.set()
                logger.exception("redis listener failed; retrying in %.1fs", delay)
            finally:
                failures += 1
                self._connected = False
                self._confirmed.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)

    @staticmethod
    def _heard(waiting: list[tuple[str, asyncio.Future[None]]], frame: str) -> None:
        """Release the publish waiting for this frame's echo, the oldest if several are."""
        for index, (published, done) in enumerate(waiting):
            if published == frame:
                del waiting[index]
                if not done.done():
                    done.set_result(None)
                return

    def _backoff(self, failures: int) -> float:
        """Capped exponential backoff with jitter: between half the delay and all of it."""
        delay = min(
            self.settings.backoff_max_seconds,
            self.settings.backoff_min_seconds * 2 ** min(failures, 32),
        )
        return random.uniform(delay / 2, delay)

    async def _serve(self, pubsub: PubSub) -> None:
        """Keep the subscriptions in step with the rooms and deliver messages, until an error.

        Two tasks share the connection: one sends (un)subscribe commands, the other reads.
        """
        sender = asyncio.create_task(self._send_subscriptions(pubsub), name="redis-subscriber")
        reader = asyncio.create_task(self._read(pubsub), name="redis-reader")
        try:
            done, _ = await asyncio.wait((sender, reader), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sender.cancel()
            reader.cancel()
            await asyncio.wait((sender, reader))
        for task in done:
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error
        raise RedisError("the listener stopped")

    async def _send_subscriptions(self, pubsub: PubSub) -> None:
        subscribed: set[str] = set()
        self._changed.set()  # a new connection starts with nothing: subscribe to every room
        while True:
            await self._changed.wait()
            self._changed.clear()
            # Only the difference is sent, so a room left and joined again in between costs
            # nothing, and commands reach Redis in the order the rooms changed.
            wanted = set(self._wanted)
            if added := wanted - subscribed:
                await pubsub.subscribe(*(self._prefix + room for room in sorted(added)))
            if removed := subscribed - wanted:
                await pubsub.unsubscribe(*(self._prefix + room for room in sorted(removed)))
            subscribed = wanted
            if not self._connected:
                self._connected = True
                self._first_attempt.set()
                logger.info(
                    "redis connected at %s; listening to %d rooms",
                    redacted(self.settings.url),
                    len(subscribed),
                )

    async def _read(self, pubsub: PubSub) -> None:
        while True:
            message: dict[str, Any] | None = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            channel = message["channel"]
            if not isinstance(channel, str) or not channel.startswith(self._prefix):
                continue
            room = channel[len(self._prefix) :]
            kind = message["type"]
            if kind == "message":
                # Frames are single lines (protocol.py); a foreign publisher's pretty-printed
                # JSON would be split by clients. Newlines outside strings are only whitespace.
                frame = message["data"].replace("\n", "")
                self.hub.deliver(room, frame)
                if waiting := self._echoes.get(room):
                    self._heard(waiting, frame)
            elif kind == "subscribe":
                self._confirmed.add(room)
                if (event := self._confirmation.pop(room, None)) is not None:
                    event.set()
            elif kind == "unsubscribe":
                self._confirmed.discard(room)
