"""`GET /metrics` after known traffic, on a real server."""

from __future__ import annotations

import asyncio
import json

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
{%- if cookiecutter.use_sse %}

from {{ cookiecutter.package_name }}.protocol import DEFAULT_ROOM
{%- endif %}

from .conftest import Server, StartServer
from .messages import next_message

pytestmark = pytest.mark.anyio


def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, by name and labels."""
    response = httpx2.get(f"{server.http_url}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def read_until_closed(ws: ClientConnection) -> None:
    while True:
        await ws.recv()


async def test_metrics_count_connections_messages_and_closes(start_server: StartServer) -> None:
    server = start_server(HUB_RATE_PER_SECOND="1", HUB_RATE_BURST="5")
    before = scrape(server)
    assert before[("realtime_connections", (("transport", "ws"),))] == 0
    publisher = await server.connect()
    listener = await server.connect()
    for ws in (publisher, listener):
        assert (await next_message(ws))["type"] == "welcome"
    for n in range(3):
        await publisher.send(json.dumps({"type": "publish", "data": n}))
    for ws in (publisher, listener):
        assert [(await next_message(ws))["data"] for _ in range(3)] == [0, 1, 2]
    during = scrape(server)
    assert during[("realtime_connections", (("transport", "ws"),))] == 2
    assert during[("realtime_rooms", ())] == 1
    assert during[("realtime_messages_received_total", ())] == 3
    assert during[("realtime_messages_published_total", ())] == 3
    assert during[("realtime_messages_delivered_total", ())] == 6, "3 messages, 2 members each"
    assert during[("realtime_messages_dropped_total", ())] == 0

    # The publisher floods (past the burst of 5) and is cut off with 1008.
    for _ in range(3):
        await publisher.send(json.dumps({"type": "publish", "data": "more"}))
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(read_until_closed(publisher), 10)
    await listener.close()
    for _ in range(100):
        after = scrape(server)
        if after[("realtime_connections", (("transport", "ws"),))] == 0:
            break
        await asyncio.sleep(0.05)
    assert after[("realtime_connections", (("transport", "ws"),))] == 0
    assert after[("realtime_rooms", ())] == 0
    assert after[("realtime_closes_total", (("by", "server"), ("code", "1008")))] == 1
    assert after[("realtime_closes_total", (("by", "client"), ("code", "1000")))] == 1
{%- if cookiecutter.use_redis %}

    assert after[("realtime_redis_up", ())] == 1
    assert after[("realtime_redis_connects_total", ())] == 1
{%- endif %}
{%- if cookiecutter.use_sse %}


async def test_metrics_count_sse_streams_and_resumes(start_server: StartServer) -> None:
    server = start_server()
    # An id this server never gave: the stream resumes, and must resync its room.
    async with (
        server.http_client(timeout=10) as http,
        http.stream("GET", "/sse", headers={"Last-Event-ID": f"{DEFAULT_ROOM}=1-1"}) as stream,
    ):
        assert stream.status_code == 200
        async for line in stream.aiter_lines():
            if line.startswith("event: resync"):
                break
        during = scrape(server)
    assert during[("realtime_connections", (("transport", "sse"),))] == 1
    assert during[("realtime_sse_resumes_total", ())] == 1
    assert during[("realtime_sse_resyncs_total", ())] == 1
{%- endif %}
