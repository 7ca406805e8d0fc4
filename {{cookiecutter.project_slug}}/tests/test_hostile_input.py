"""Hostile input, generated: whatever one client sends, it hurts nobody but itself.

Hypothesis throws JSON values (NaN, infinities, lone surrogates, deep nesting included), Unicode
strings, text frames and bytes at a real server over real sockets. After each, a second client
in the same room must still get a fresh broadcast, every frame anyone got must be strict JSON
in valid UTF-8, nobody but the sender may have been closed, and the server must still be up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal, Protocol

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from .conftest import Server, StartServer

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

# How long anything that should be quick may take: a frame arriving, a stream opening.
SOON = 10.0
# The sender may be closed for its own abuse, never for a fault of the server's.
SERVER_FAULT = 1011

Kind = Literal["text", "binary", "text-bytes", "post"]


@dataclass(frozen=True)
class Hostile:
    """One thing a client sends: a text frame, a binary frame, a text frame whose bytes may
    not be UTF-8, or the body of a `POST /publish`."""

    kind: Kind
    payload: str | bytes


# Every code point, and often a lone surrogate (it reaches the server as a `\\udXXX` escape).
any_char = st.characters(codec=None, exclude_categories=()) | st.characters(categories=["Cs"])
any_text = st.text(any_char, max_size=12)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and the infinities included: json.dumps writes them as bare tokens
    | any_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=12,
)
# Literals json.dumps never writes: numbers out of a double's range, nesting too deep to parse.
raw_json = (
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", '"\\ud800"', '"\\udfff"'])
    | st.from_regex(r"-?[1-9][0-9]{0,2}(\.[0-9]{1,3})?[eE][+-]?[0-9]{1,4}", fullmatch=True)
    | st.integers(1, 5000).map(lambda depth: "[" * depth + "]" * depth)
    | st.integers(1, 5000).map(lambda depth: '{"a":' * depth + "1" + "}" * depth)
)


def frame(message: object) -> str:
    """A message as a client would send it: escapes for everything not ASCII, surrogates too."""
    return json.dumps(message, ensure_ascii=True, allow_nan=True)


publishes = json_values.map(lambda data: frame({"type": "publish", "data": data}))
raw_publishes = raw_json.map(lambda data: '{"type":"publish","data":' + data + "}")
envelopes = st.builds(
    lambda kind, room, key, value: frame({"type": kind, "room": room, key: value}),
    st.sampled_from(["publish", "join", "leave"]) | any_text,
    st.just("lobby") | any_text,
    st.just("data") | any_text,
    json_values,
)
hostile = st.one_of(
    (publishes | raw_publishes | envelopes).map(lambda text: Hostile("text", text)),
    # Text frames that are not JSON at all (UTF-8 cannot carry a lone surrogate).
    st.text(st.characters(codec="utf-8"), max_size=64).map(lambda text: Hostile("text", text)),
    st.binary(max_size=64).map(lambda data: Hostile("binary", data)),
    st.binary(max_size=64).map(lambda data: Hostile("text-bytes", data)),
{%- if cookiecutter.use_sse %}
    json_values.map(lambda data: Hostile("post", frame({"data": data}))),
    raw_json.map(lambda data: Hostile("post", '{"data":' + data + "}")),
    st.binary(max_size=64).map(lambda data: Hostile("post", data)),
{%- endif %}
)


Wanted = Callable[[object], bool]


def strict_json(text: str) -> object:
    """Parse RFC 8259 JSON only: no NaN or infinities, no lone surrogates, no 1e400."""

    def refuse(token: str) -> object:
        raise ValueError(f"{token} is not JSON")

    value = json.loads(text, parse_constant=refuse)
    # 1e400 parses as inf, and a lone surrogate cannot be UTF-8: both fail here.
    json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
    return value


def checked(text: str) -> object:
    try:
        return strict_json(text)
    except ValueError as error:
        raise AssertionError(f"not strict JSON ({error}): {text[:200]!r}") from None


def carries(nonce: str) -> Wanted:
    return lambda message: isinstance(message, dict) and message.get("data") == nonce


def is_welcome(message: object) -> bool:
    return isinstance(message, dict) and message.get("type") == "welcome"


class Bystander(Protocol):
    async def until(self, wanted: Wanted) -> None:
        """Read until a message is `wanted`, checking every message before it."""


class WebSocketClient:
    """Reads frames as bytes and checks every message in them, whatever it is."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def until(self, wanted: Wanted) -> None:
        while True:
            raw = await asyncio.wait_for(self.ws.recv(decode=False), SOON)
            assert isinstance(raw, bytes), "recv(decode=False) gives bytes"
            # One message per line (HUB_BATCH_BYTES); strict UTF-8, then strict JSON.
            if any(wanted(checked(line)) for line in raw.decode("utf-8").split("\n")):
                return


def http_client(server: Server) -> httpx2.AsyncClient:
    # Plain HTTP on loopback: no TLS context to build (0.2 s) for each example.
    return server.http_client(timeout=SOON, verify=False)


@asynccontextmanager
async def joined(server: Server) -> AsyncIterator[WebSocketClient]:
    # No room named: the client is in the default room, with or without the rooms feature.
    async with server.connect(max_size=None) as ws:
        client = WebSocketClient(ws)
        await client.until(is_welcome)
        yield client
{%- if cookiecutter.use_sse %}


class StreamClient:
    """An `/sse` stream, every event's data checked."""

    def __init__(self, events: AsyncIterator[httpx2.ServerSentEvent]) -> None:
        self.events = events

    async def until(self, wanted: Wanted) -> None:
        while True:
            try:
                event = await asyncio.wait_for(anext(self.events), SOON)
            except StopAsyncIteration:
                raise AssertionError("the SSE stream ended") from None
            if event.data and wanted(checked(event.data)):
                return


@asynccontextmanager
async def streaming(server: Server) -> AsyncIterator[StreamClient]:
    async with http_client(server) as http, http.sse("/sse") as source:
        events = aiter(source)
        # The retry hint comes first, once the stream is subscribed to the default room.
        assert (await asyncio.wait_for(anext(events), SOON)).retry is not None
        yield StreamClient(events)
{%- endif %}


async def attack(server: Server, sender: WebSocketClient, hostile: Hostile) -> None:
    if hostile.kind == "post":
        await post(server, hostile.payload)
        return
    with contextlib.suppress(ConnectionClosed):  # closed by its own fault: checked later
        if hostile.kind == "text":
            await sender.ws.send(hostile.payload)
        else:  # a binary frame, or a text frame whose bytes may not be UTF-8
            await sender.ws.send(hostile.payload, text=hostile.kind == "text-bytes")


async def post(server: Server, body: str | bytes) -> None:
    content = body.encode() if isinstance(body, str) else body
    async with http_client(server) as http:
        response = await http.post(
            "/publish", content=content, headers={"Content-Type": "application/json"}
        )
    assert response.status_code < 500, f"POST /publish {content!r}: {response.text}"
    strict_json(response.content.decode("utf-8"))


@pytest.fixture
def server(start_server: StartServer) -> Server:
    # One server for every example: what one input did must not hurt the next one's clients.
    return start_server(HUB_RATE_PER_SECOND="100000", HUB_RATE_BURST="100000")


@settings(
    max_examples=60,
    deadline=None,
    # The server is shared by the examples on purpose.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(hostile=hostile)
async def test_no_input_hurts_anyone_but_its_sender(server: Server, hostile: Hostile) -> None:
    nonce = uuid.uuid4().hex
    async with contextlib.AsyncExitStack() as stack:
        sender = await stack.enter_async_context(joined(server))
        witness = await stack.enter_async_context(joined(server))
        others: list[Bystander] = [witness]
{%- if cookiecutter.use_sse %}
        others.append(await stack.enter_async_context(streaming(server)))
{%- endif %}
        await attack(server, sender, hostile)

        # A fresh broadcast reaches everyone else, after only strict frames.
        try:
            await witness.ws.send(frame({"type": "publish", "data": nonce}))
            for other in others:
                await other.until(carries(nonce))
        except ConnectionClosed as closed:
            raise AssertionError(f"a bystander was closed: {closed}") from None
        # The sender too, unless it was closed for what it sent.
        try:
            await sender.until(carries(nonce))
        except ConnectionClosed as closed:
            if closed.rcvd is not None and closed.rcvd.code == SERVER_FAULT:
                raise AssertionError(f"the sender was closed by a server fault: {closed}") from None
    assert server.process.poll() is None, server.output()
