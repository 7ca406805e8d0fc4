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
With a history (every project's: history.py), one script per message appends it to the room's
Redis Stream (trimmed to about `HISTORY_SIZE`, expiring `HISTORY_TTL_SECONDS` after its last
message) and publishes it with the stream id as its event id, so ids follow delivery order.

Health is measured, not assumed: every connection has socket timeouts and TCP keepalive, and
the listener sends a PING every `REDIS_HEALTH_CHECK_INTERVAL_SECONDS`; a Redis that does not
answer within `REDIS_PUBLISH_TIMEOUT_SECONDS` (hung, frozen, cut off) counts as down. The
listener then reconnects with capped exponential backoff and jitter, subscribes again to every
room that has members here, and `ready` is false meanwhile: from the moment Redis stops
answering, at most the interval plus the timeout (3 s by default).

Pub/sub keeps nothing, so after an outage the listener fills the gap itself: it knows the last
event id it delivered in each room (ids are stamped by the history script), reads the history
after it, and delivers what was missed before the live frames, dropping what it delivered
already. A room the history cannot cover (no history, trimmed, no id known yet) gets a `resync`
frame instead (broker.resync_frame): never a silent gap.

A publish has one deadline, `REDIS_PUBLISH_TIMEOUT_SECONDS` after it was queued. It fails with
`broker_unavailable` if it never left (Redis down, or the deadline passed before it was sent),
and with `publish_outcome_unknown` if it was sent and not answered in time. A publish with a
key is recorded under the key (`SET` with expiry, in the same script that publishes it), so a
retry with the key is not delivered twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections import deque
from collections.abc import Coroutine
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .broker import (
    AlreadyPublished,
    Broker,
    BrokerFactory,
    BrokerUnavailable,
    PublishOutcomeUnknown,
    PublishSettings,
    Sent,
    resync_frame,
)
from .history import History, HistorySettings
from .history_redis import HISTORY_FIELD, RedisHistory, history_key, history_since, stream_order
from .hub import Hub
from .metrics import REDIS_CONNECTS, REDIS_UP
from .protocol import with_id

__all__ = [
    "RedisBroker",
    "RedisSettings",
    "redis_brokers",
    "redis_client",
]

logger = logging.getLogger(__name__)

# Publishes a frame, in one step: with a history, appends it to the room's stream (trimmed to
# about ARGV[3] entries) and publishes it with the entry's id as its first field, as
# `protocol.with_id` writes it, so ids are in the order members get the messages; with a key,
# first checks that the key was not used within the window, and records it with the id.
# KEYS: the stream (with a history), then the key's marker (with a key). ARGV: channel, frame,
# history length (0: none), field, key window in ms (0: no key), the stream's expiry in ms (0:
# none), refreshed by every message, so an idle room's history goes (HISTORY_TTL_SECONDS).
# Returns {1, id} when published, {0, the earlier message's id} for a key already used; the id
# is '' without a history. Trimming is approximate (~), which Redis does cheaply in whole
# nodes; the history's reader checks the real oldest id, so a client never gets a gap it is
# not told about.
PUBLISH_SCRIPT = """
local marker = nil
if ARGV[5] ~= '0' then
    marker = KEYS[#KEYS]
    local earlier = redis.call('GET', marker)
    if earlier then return {0, earlier} end
end
local id, frame = '', ARGV[2]
if ARGV[3] ~= '0' then
    id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', ARGV[4], ARGV[2])
    if ARGV[6] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[6]) end
    frame = '{"id":"' .. id .. '",' .. string.sub(ARGV[2], 2)
end
redis.call('PUBLISH', ARGV[1], frame)
if marker then redis.call('SET', marker, id, 'PX', ARGV[5]) end
return {1, id}
"""
# The start of every frame the script stamped: its id follows, up to the next quote.
_STAMPED = '{"id":"'
# Where a room's history starts when it was empty: before every id.
_EMPTY = "0-0"


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
    # How long a publish may wait for Redis, from the moment it is queued: not sent by then,
    # the sender gets `broker_unavailable`; sent and not answered, `publish_outcome_unknown`.
    # Also the socket timeout of every Redis command, and how long a PING may go unanswered.
    publish_timeout_seconds: float = Field(default=2.0, gt=0)
    # The listener PINGs Redis this often; with the timeout above it bounds how long a hung
    # Redis goes unnoticed (interval + timeout: 3 s by default, then /readyz fails).
    health_check_interval_seconds: float = Field(default=1.0, gt=0)
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


def keepalive_options() -> dict[int, int]:
    """TCP keepalive after 10 s idle, then every 5 s, 3 probes: a peer that vanished without
    a word (a host gone, a partition) is dropped by the kernel in about 25 s, not two hours,
    also on connections the PING does not cover (the pool's, while idle)."""
    names = {"TCP_KEEPIDLE": 10, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3}
    return {getattr(socket, name): value for name, value in names.items() if hasattr(socket, name)}


def redis_client(settings: RedisSettings, *, retry_connection_errors: bool = False) -> Redis:
    """A client for `settings.url`, with socket timeouts and TCP keepalive.

    No retries inside redis-py by default: a failed command is reported at once (a publish
    retried blindly could be delivered twice), and the listener owns reconnecting, so that it
    can resubscribe and report readiness. Readers, whose commands are safe to repeat, may
    retry once on a broken connection (`retry_connection_errors`): a pooled connection that
    went stale while Redis restarted then costs nothing but a reconnect.
    """
    retry = Retry(NoBackoff(), 0)
    if retry_connection_errors:
        retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    return Redis.from_url(
        settings.url,
        decode_responses=True,
        retry=retry,
        socket_connect_timeout=settings.publish_timeout_seconds,
        socket_timeout=settings.publish_timeout_seconds,
        socket_keepalive=True,
        socket_keepalive_options=keepalive_options(),
    )


def stamped_order(frame: str) -> tuple[int, int] | None:
    """The sort key of the event id the publish script wrote at the start of a frame (a
    stream id, `milliseconds-sequence`); None for a frame without one (a foreign publisher's)."""
    if not frame.startswith(_STAMPED):
        return None
    end = frame.find('"', len(_STAMPED))
    return stream_order(frame[len(_STAMPED) : end]) if end > 0 else None


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


# A publish waiting to be sent: room, frame, key marker (None without a key), its future and
# its deadline on the event loop's clock.
Outgoing = tuple[str, str, str | None, Sent, float]


class RedisBroker(Broker):
    """Publishes to Redis and listens, on one connection, to the channels of this process's
    rooms; see the module docstring for what it promises."""

    name = "redis"

    def __init__(
        self,
        hub: Hub,
        settings: RedisSettings,
        history_size: int | None = None,
        publish: PublishSettings | None = None,
        history_ttl_seconds: float = 0,
    ) -> None:
        self.hub = hub
        self.settings = settings
        # With a size, every message is recorded in its room's stream as it is published.
        self.history_size = history_size
        # The history stream's expiry after its last message, in ms (0: never).
        self.history_ttl_ms = round(history_ttl_seconds * 1000)
        self.key_window_ms = (publish or PublishSettings()).key_window_seconds * 1000
        self._prefix = settings.channel_prefix
        self._redis = redis_client(settings)
        # Rooms with members here, and the subscriptions Redis has confirmed on the current
        # listener connection (after an outage: and whose gap is filled).
        self._wanted: set[str] = set()
        self._confirmed: set[str] = set()
        self._confirmation: dict[str, asyncio.Event] = {}
        self._changed = asyncio.Event()
        self._connected = False
        self._first_attempt = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._outgoing: deque[Outgoing] = deque()
        self._has_outgoing = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        # Health: set by every reply on the listener connection (the PING waits for one).
        self._heard = asyncio.Event()
        # Whether Redis answered the listener once (so a new connection ends an outage), and
        # whether this outage was logged (one warning per outage, not one per attempt).
        self._was_connected = False
        self._outage_logged = False
        self._outage_began = 0.0
        # Per room, the order of the last stamped frame delivered here: what the gap fill after
        # an outage starts from, and how a frame already delivered is recognised.
        self._last: dict[str, tuple[int, int]] = {}
        self._last_id: dict[str, str] = {}
        # Rooms to recover on the current connection (wanted when it opened, after an outage),
        # and the live frames held back while a room's gap is read from the history.
        self._to_recover: set[str] = set()
        self._held: dict[str, list[str]] = {}
        self._fills: set[asyncio.Task[None]] = set()

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

    def publish(self, room: str, frame: str, key: str | None = None) -> Sent:
        loop = asyncio.get_running_loop()
        sent: Sent = loop.create_future()
        if not self._connected:
            sent.set_exception(
                BrokerUnavailable(f"Redis at {redacted(self.settings.url)} is unreachable")
            )
        elif len(self._outgoing) >= self.settings.max_pending_publishes:
            sent.set_exception(BrokerUnavailable("Redis is not keeping up; try again later"))
        else:
            marker = None if key is None else f"{self._prefix}{room}:published:{key}"
            deadline = loop.time() + self.settings.publish_timeout_seconds
            self._outgoing.append((room, frame, marker, sent, deadline))
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

    async def _send(self, batch: list[Outgoing]) -> None:
        """One round trip for the batch, within the deadline of its oldest publish."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        late = [item for item in batch if item[4] <= now]
        _fail(late, BrokerUnavailable("Redis did not take the message in time; nobody got it"))
        batch = [item for item in batch if item[4] > now and not item[3].done()]
        if not batch:
            return
        commands = [self._command(room, frame, marker) for room, frame, marker, _, _ in batch]
        went_out = False
        results: list[Any]
        try:
            async with asyncio.timeout_at(min(item[4] for item in batch)):
                # With members here, this process must hear a room before publishing to it,
                # or the sender would miss its own message: a new subscription is confirmed
                # first (and after an outage, the room's gap filled).
                for room in {room for room, *_ in batch if room in self._wanted}:
                    await self._listening(room)
                pool = self._redis.connection_pool
                connection = await pool.get_connection()  # type: ignore[no-untyped-call]
                try:
                    went_out = True
                    await connection.send_packed_command(
                        connection.pack_commands(commands), check_health=False
                    )
                    results = []
                    for _ in commands:
                        try:
                            results.append(await connection.read_response())
                        except ResponseError as error:  # Redis answered: nothing was done
                            results.append(error)
                except BaseException:
                    # Replies may still be on their way: the connection is out of step.
                    await connection.disconnect()
                    raise
                finally:
                    await pool.release(connection)
        except (RedisError, OSError) as error:  # TimeoutError too, the deadline's
            reason = str(error) or type(error).__name__
            failure: Exception = BrokerUnavailable(f"Redis did not take the message: {reason}")
            if went_out:
                failure = PublishOutcomeUnknown(
                    f"Redis did not answer in time ({reason}): the message may or may not "
                    "be delivered; publish it again with the same key to be sure"
                )
            results = [failure] * len(batch)
        for (_, _, _, sent, _), result in zip(batch, results, strict=True):
            if sent.done():
                continue
            if isinstance(result, BaseException):
                if not isinstance(result, (BrokerUnavailable, PublishOutcomeUnknown)):
                    result = BrokerUnavailable(f"Redis refused the message: {result}")
                sent.set_exception(result)
            elif isinstance(result, list):  # the script's {published, id}
                published, event_id = int(result[0]), str(result[1]) or None
                if published:
                    sent.set_result(event_id)
                else:
                    sent.set_exception(AlreadyPublished(event_id))
            else:  # a plain PUBLISH: no id
                sent.set_result(None)

    def _command(self, room: str, frame: str, marker: str | None) -> tuple[str | int, ...]:
        channel = self._prefix + room
        if self.history_size is None and marker is None:
            return ("PUBLISH", channel, frame)
        keys = (
            [] if self.history_size is None else [history_key(self.settings.channel_prefix, room)]
        )
        if marker is not None:
            keys.append(marker)
        # EVAL, not EVALSHA: Redis caches the script by its hash either way, and EVALSHA
        # would first need to know whether the script is loaded, a second round trip.
        return (
            "EVAL",
            PUBLISH_SCRIPT,
            len(keys),
            *keys,
            channel,
            frame,
            self.history_size or 0,
            HISTORY_FIELD,
            0 if marker is None else self.key_window_ms,
            self.history_ttl_ms,
        )

    async def listening(self, room: str) -> None:
        try:
            await asyncio.wait_for(self._listening(room), self.settings.publish_timeout_seconds)
        except TimeoutError:
            raise BrokerUnavailable(f"Redis did not confirm room {room!r}") from None

    async def _listening(self, room: str) -> None:
        if room in self._confirmed:
            return
        event = self._confirmation.setdefault(room, asyncio.Event())
        await event.wait()

    def subscribe(self, room: str) -> None:
        self._wanted.add(room)
        self._changed.set()

    def unsubscribe(self, room: str) -> None:
        self._wanted.discard(room)
        # Joined again later, the room starts afresh: nothing of it is owed to anyone here.
        self._last.pop(room, None)
        self._last_id.pop(room, None)
        self._to_recover.discard(room)
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
                self._lost(str(error) or type(error).__name__, delay)
            except Exception:
                self._first_attempt.set()
                logger.exception("redis listener failed; retrying in %.1fs", delay)
            finally:
                failures += 1
                self._connected = False
                REDIS_UP.set(0)
                self._confirmed.clear()
                self._held.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)

    def _lost(self, error: str, delay: float) -> None:
        """One warning per outage; the attempts after it are logged at debug level."""
        url = redacted(self.settings.url)
        if self._outage_logged:
            logger.debug("redis still unreachable at %s: %s; retrying in %.1fs", url, error, delay)
            return
        self._outage_logged = True
        self._outage_began = asyncio.get_running_loop().time()
        logger.warning(
            "redis unreachable at %s: %s; retrying in %.1fs; not ready until it answers",
            url,
            error,
            delay,
        )

    def _backoff(self, failures: int) -> float:
        """Capped exponential backoff with jitter: between half the delay and all of it."""
        delay = min(
            self.settings.backoff_max_seconds,
            self.settings.backoff_min_seconds * 2 ** min(failures, 32),
        )
        return random.uniform(delay / 2, delay)

    async def _serve(self, pubsub: PubSub) -> None:
        """Keep the subscriptions in step with the rooms and deliver messages, until an error.

        Three tasks share the connection: one sends (un)subscribe commands, one reads, one
        PINGs. Readiness comes with Redis's first reply on it, not with the TCP connection
        (the kernel of a frozen Redis still accepts those).
        """
        self._to_recover = set(self._wanted) if self._was_connected else set()
        tasks = [
            asyncio.create_task(self._send_subscriptions(pubsub), name="redis-subscriber"),
            asyncio.create_task(self._read(pubsub), name="redis-reader"),
            asyncio.create_task(self._check_health(pubsub), name="redis-health"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*tasks, *self._fills):
                task.cancel()
            await asyncio.wait((*tasks, *self._fills))
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

    async def _check_health(self, pubsub: PubSub) -> None:
        """PING every interval; no reply (of any kind) within the timeout ends the connection."""
        timeout = self.settings.publish_timeout_seconds
        while True:
            self._heard.clear()
            await pubsub.ping()
            try:
                await asyncio.wait_for(self._heard.wait(), timeout)
            except TimeoutError:
                raise RedisTimeoutError(f"no answer to PING within {timeout}s") from None
            await asyncio.sleep(self.settings.health_check_interval_seconds)

    async def _answered(self, rooms: int) -> None:
        """Redis answered on a new connection: it is back."""
        if self._was_connected:
            # Pooled connections idle through the outage may be dead (a restarted Redis
            # closed them): drop them, so that the first publish after it opens a fresh one.
            await self._redis.connection_pool.disconnect(inuse_connections=False)
        self._connected = True
        self._was_connected = True
        REDIS_UP.set(1)
        REDIS_CONNECTS.inc()
        self._first_attempt.set()
        url = redacted(self.settings.url)
        if self._outage_logged:
            self._outage_logged = False
            away = asyncio.get_running_loop().time() - self._outage_began
            logger.info("redis back at %s after %.1fs; listening to %d rooms", url, away, rooms)
        else:
            logger.info("redis connected at %s; listening to %d rooms", url, rooms)

    async def _read(self, pubsub: PubSub) -> None:
        while True:
            message: dict[str, Any] | None = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            self._heard.set()
            if not self._connected:
                await self._answered(len(self._wanted))
            channel = message["channel"]
            if not isinstance(channel, str) or not channel.startswith(self._prefix):
                continue
            room = channel[len(self._prefix) :]
            kind = message["type"]
            if kind == "message":
                # Frames are single lines (protocol.py); a foreign publisher's pretty-printed
                # JSON would be split by clients. Newlines outside strings are only whitespace.
                frame = message["data"].replace("\n", "")
                held = self._held.get(room)
                if held is not None:
                    held.append(frame)
                else:
                    self._deliver(room, frame)
            elif kind == "subscribe":
                if room in self._to_recover:
                    self._to_recover.discard(room)
                    self._held[room] = []
                    self._in_background(self._fill_gap(room), f"redis-fill-{room}")
                else:
                    self._confirm(room)
                    if self.history_size is not None and room not in self._last_id:
                        self._in_background(self._note_start(room), f"redis-start-{room}")
            elif kind == "unsubscribe":
                self._confirmed.discard(room)

    def _in_background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run `work` for as long as the current listener connection lasts."""
        task = asyncio.create_task(work, name=name)
        self._fills.add(task)
        task.add_done_callback(self._fills.discard)

    async def _note_start(self, room: str) -> None:
        """The room's newest history entry when this process began to listen to it: where a
        gap fill starts if an outage comes before any message, so that a quiet room gets what
        it missed too, not a resync. (A message published in the instant between the
        subscription and this read, and lost in an outage before it arrives, is missed.)"""
        try:
            newest = cast(
                list[tuple[str, dict[str, str]]],
                await self._redis.xrevrange(
                    history_key(self.settings.channel_prefix, room), count=1
                ),
            )
        except (RedisError, OSError):
            return  # an outage before the first message then resyncs the room
        if room in self._wanted:
            self._last_id.setdefault(room, newest[0][0] if newest else _EMPTY)

    def _confirm(self, room: str) -> None:
        self._confirmed.add(room)
        if (event := self._confirmation.pop(room, None)) is not None:
            event.set()

    def _deliver(self, room: str, frame: str) -> None:
        """Hand a frame to the hub, unless it was delivered here already (ids only grow)."""
        event_id = None
        if self.history_size is not None and (position := stamped_order(frame)) is not None:
            last = self._last.get(room)
            if last is not None and position <= last:
                return
            self._last[room] = position
            event_id = frame[len(_STAMPED) : frame.find('"', len(_STAMPED))]
            self._last_id[room] = event_id
        self.hub.deliver(room, frame, event_id)

    async def _fill_gap(self, room: str) -> None:
        """After an outage: what the room's history recorded while this process was away,
        then the live frames held meanwhile, each once; or a resync if the history cannot."""
        missed: list[tuple[str, str]] | None = None
        last_id = self._last_id.get(room)
        if self.history_size is not None and last_id is not None:
            key = history_key(self.settings.channel_prefix, room)
            try:
                if last_id == _EMPTY:
                    missed = await history_since(self._redis, key, None)
                    # Redis trims only down to about the size: fewer entries, none trimmed.
                    if missed is not None and len(missed) >= self.history_size:
                        missed = None
                else:
                    missed = await history_since(self._redis, key, last_id)
            except (RedisError, OSError) as error:
                logger.warning("reading the history of room %r after an outage: %s", room, error)
        if missed is None:
            self.hub.deliver(room, resync_frame([room]), type="resync")
        else:
            for event_id, frame in missed:
                self._deliver(room, with_id(frame, event_id))
        for frame in self._held.pop(room, []):
            self._deliver(room, frame)
        self._confirm(room)


def redis_brokers(settings: RedisSettings) -> dict[str, BrokerFactory]:
    """The Redis broker, for `redis://` and `rediss://` broker URLs (None: REDIS_URL)."""

    def open_redis_broker(
        url: str | None, hub: Hub, history: HistorySettings, publish: PublishSettings
    ) -> tuple[Broker, History]:
        redis = settings if url is None else settings.model_copy(update={"url": url})
        # Every message gets its event id once, as Redis records it in the room's stream while
        # publishing it, before any subscriber sees it.
        broker = RedisBroker(
            hub,
            redis,
            history_size=history.size,
            publish=publish,
            history_ttl_seconds=history.ttl_seconds,
        )
        # Reads are safe to repeat: a connection that went stale while Redis restarted is
        # replaced once, so the first resume after a recovery works.
        history_client = redis_client(redis, retry_connection_errors=True)
        return broker, RedisHistory(history_client, redis.channel_prefix)

    return {"redis": open_redis_broker, "rediss": open_redis_broker}


def _fail(batch: list[Outgoing], error: BrokerUnavailable) -> None:
    for *_, sent, _ in batch:
        if not sent.done():
            sent.set_exception(error)
