"""Redis fanout: rooms shared by every process and host connected to one Redis, over pub/sub.

Each room is one Redis channel (`REDIS_CHANNEL_PREFIX` + room name). A process subscribes to a
room's channel only while it has members of that room, over one listener connection, and hands
each message it receives (the frame exactly as clients get it, encoded once by the publisher)
to its hub. A process that publishes does not deliver locally: its own members get the frame
from Redis like everyone else's, so every member gets it once, in the one order Redis gives the
channel.

Publishes are queued and sent by one task over one connection, in order, every publish that
is waiting going in one pipelined round trip: a busy room's messages reach Redis, and come
back to each process, several at a time, so each member gets them in one write (hub.py).
With a history (the SSE feature), one script per message appends it to the room's Redis
Stream and publishes it with the stream id as its event id, so ids follow delivery order.

The listener survives Redis restarts: it reconnects with capped exponential backoff and jitter,
subscribes again to every room that has members here, and `ready` is false meanwhile. Pub/sub
keeps nothing: a message published while this process is cut off from Redis never reaches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline, PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .broker import Broker, BrokerUnavailable, Sent
from .hub import Hub
from .metrics import REDIS_CONNECTS, REDIS_UP

__all__ = ["HISTORY_FIELD", "RedisBroker", "RedisSettings", "history_key", "redis_client"]

logger = logging.getLogger(__name__)

# The field of a history stream entry that holds the frame (without its id).
HISTORY_FIELD = "frame"
# Appends a frame to a room's stream (trimmed to about ARGV[3] entries) and publishes it with
# the entry's id as its first field, as `protocol.with_id` writes it: in one step, so ids are
# in the order members get the messages. KEYS[1]: the stream; ARGV: channel, frame, length,
# field. Trimming is approximate (~), which Redis does cheaply in whole nodes; the history's
# reader checks the real oldest id, so a client never gets a gap it is not told about.
STAMP_AND_PUBLISH = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', ARGV[4], ARGV[2])
redis.call('PUBLISH', ARGV[1], '{"id":"' .. id .. '",' .. string.sub(ARGV[2], 2))
return id
"""


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
    # Publishes waiting to be sent to Redis; past this (Redis is not keeping up) a publish
    # fails at once with `broker_unavailable` instead of holding memory without bound.
    max_pending_publishes: int = Field(default=10_000, ge=1)

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


def history_key(settings: RedisSettings, room: str) -> str:
    """The Redis Stream holding a room's history (the SSE feature)."""
    return f"{settings.channel_prefix}{room}:history"


def redis_client(settings: RedisSettings) -> Redis:
    """A client for `settings.url`. No retries inside redis-py: a failed command is reported at
    once, and the listener owns reconnecting, so that it can resubscribe and report readiness."""
    return Redis.from_url(
        settings.url,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=settings.publish_timeout_seconds,
        socket_timeout=settings.publish_timeout_seconds,
        socket_keepalive=True,
    )


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

    def __init__(self, hub: Hub, settings: RedisSettings, history_size: int | None = None) -> None:
        self.hub = hub
        self.settings = settings
        # With a size, every message is recorded in its room's stream as it is published.
        self.history_size = history_size
        self._prefix = settings.channel_prefix
        self._redis = redis_client(settings)
        # Rooms with members here, and the subscriptions Redis has confirmed on the current
        # listener connection.
        self._wanted: set[str] = set()
        self._confirmed: set[str] = set()
        self._confirmation: dict[str, asyncio.Event] = {}
        self._changed = asyncio.Event()
        self._connected = False
        self._first_attempt = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._outgoing: deque[tuple[str, str, Sent]] = deque()
        self._has_outgoing = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self._connected

    async def start(self) -> None:
        if self._listener is not None:
            raise RuntimeError(f"Expected no listener, got {self._listener!r}")
        self._listener = asyncio.create_task(self._listen(), name="redis-listener")
        self._sender = asyncio.create_task(self._send_publishes(), name="redis-publisher")
        # One attempt, so that a service whose Redis is up takes traffic as soon as it starts;
        # it starts either way, not ready, and keeps trying.
        await self._first_attempt.wait()

    def publish(self, room: str, frame: str) -> Sent:
        sent: Sent = asyncio.get_running_loop().create_future()
        if not self._connected:
            sent.set_exception(
                BrokerUnavailable(f"Redis at {redacted(self.settings.url)} is unreachable")
            )
        elif len(self._outgoing) >= self.settings.max_pending_publishes:
            sent.set_exception(BrokerUnavailable("Redis is not keeping up; try again later"))
        else:
            self._outgoing.append((room, frame, sent))
            self._has_outgoing.set()
        return sent

    async def _send_publishes(self) -> None:
        """Send queued publishes in order: all that are waiting, in one round trip."""
        while True:
            await self._has_outgoing.wait()
            self._has_outgoing.clear()
            while self._outgoing:
                batch = list(self._outgoing)
                self._outgoing.clear()
                try:
                    await self._send(batch)
                except asyncio.CancelledError:
                    _fail(batch, BrokerUnavailable("the service is shutting down"))
                    raise
                except Exception:  # a bug: the publishes fail, this task goes on
                    logger.exception("sending %d publishes to Redis failed", len(batch))
                    _fail(batch, BrokerUnavailable("Redis refused the message"))

    async def _send(self, batch: list[tuple[str, str, Sent]]) -> None:
        try:
            # With members here, this process must hear a room before publishing to it, or
            # the sender would miss its own message: a new subscription is confirmed first.
            for room in {room for room, _, _ in batch if room in self._wanted}:
                await self.listening(room)
            async with self._redis.pipeline(transaction=False) as pipeline:
                for room, frame, _ in batch:
                    self._queue_publish(pipeline, room, frame)
                results = await pipeline.execute(raise_on_error=False)
        except BrokerUnavailable as error:
            results = [error] * len(batch)
        except (RedisError, OSError) as error:
            results = [BrokerUnavailable(f"Redis refused the message: {error}")] * len(batch)
        for (_, _, sent), result in zip(batch, results, strict=True):
            if sent.done():
                continue
            if isinstance(result, BaseException):
                if not isinstance(result, BrokerUnavailable):
                    result = BrokerUnavailable(f"Redis refused the message: {result}")
                sent.set_exception(result)
            else:
                sent.set_result(None if self.history_size is None else str(result))

    def _queue_publish(self, pipeline: Pipeline, room: str, frame: str) -> None:
        channel = self._prefix + room
        if self.history_size is None:
            pipeline.publish(channel, frame)
        else:
            # EVAL, not EVALSHA: Redis caches the script by its hash either way, and a pipeline
            # of EVALSHA would first ask whether the script is loaded, a second round trip.
            pipeline.eval(
                STAMP_AND_PUBLISH,
                1,
                history_key(self.settings, room),
                channel,
                frame,
                self.history_size,
                HISTORY_FIELD,
            )

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
        for task in (self._sender, self._listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._sender = self._listener = None
        _fail(list(self._outgoing), BrokerUnavailable("the service is shutting down"))
        self._outgoing.clear()
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
                REDIS_UP.set(0)
                self._confirmed.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)

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
                REDIS_UP.set(1)
                REDIS_CONNECTS.inc()
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
            elif kind == "subscribe":
                self._confirmed.add(room)
                if (event := self._confirmation.pop(room, None)) is not None:
                    event.set()
            elif kind == "unsubscribe":
                self._confirmed.discard(room)


def _fail(batch: list[tuple[str, str, Sent]], error: BrokerUnavailable) -> None:
    for _, _, sent in batch:
        if not sent.done():
            sent.set_exception(error)
