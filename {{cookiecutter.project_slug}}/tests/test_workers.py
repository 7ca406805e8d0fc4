"""`serve --workers 2`: two processes on one port sharing rooms through a real Redis."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from .conftest import PACKAGE, Server, StartServer
from .messages import next_message
from .test_logs import json_lines, send_every_target_form
from .test_metrics import scrape

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

# Enough that both workers hold some: the kernel hands each connection to either of them.
MOST_CLIENTS = 60


class Client:
    """A WebSocket client that records every message published to it, in the background."""

    def __init__(self, ws: ClientConnection, welcome: dict[str, Any]) -> None:
        self.ws = ws
        self.welcome = welcome
        self.received: list[object] = []
        self._reading = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            message = await next_message(self.ws, seconds=60)
            if "data" in message:
                self.received.append(message["data"])

    async def publish(self, data: object) -> None:
        await self.ws.send(json.dumps({"type": "publish", "data": data}))

    async def close(self) -> None:
        self._reading.cancel()
        await self.ws.close()


async def worker_of(server: Server, client: Client) -> int:
    """The pid of the worker whose log says it opened this client's connection."""
    host, port = client.ws.local_address[:2]
    for _ in range(100):
        for line in json_lines(server):
            if line["msg"] == "connection opened" and line["client"] == f"{host}:{port}":
                pid: int = line["pid"]
                return pid
        await asyncio.sleep(0.05)  # the worker writes it as it goes
    raise AssertionError(f"no line says which worker opened {client.welcome}")


async def until(condition: Any, what: str, attempts: int = 200) -> None:
    for _ in range(attempts):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def started_workers(server: Server) -> set[int]:
    return {
        line["pid"] for line in json_lines(server) if line["msg"] == "Application startup complete."
    }


# Two processes start, each importing everything: slow on a loaded machine.
@pytest.mark.timeout(180)
async def test_two_workers_deliver_what_either_publishes_to_every_client_once(
    start_server: StartServer,
) -> None:
    server = start_server("-m", PACKAGE, "serve", "--workers", "2", SERVER_LOG_FORMAT="json")
    # The first to start takes every connection until the other does.
    await until(lambda: len(started_workers(server)) == 2, "both workers start", attempts=1200)
    clients: list[Client] = []
    workers: dict[int, list[Client]] = {}
    while len(workers) < 2 and len(clients) < MOST_CLIENTS:
        ws = await server.connect()
        client = Client(ws, await next_message(ws))
        clients.append(client)
        workers.setdefault(await worker_of(server, client), []).append(client)
    assert len(workers) == 2, f"{len(clients)} clients all went to one worker: {workers.keys()}"
    first, second = (members[0] for members in workers.values())

    # A room's first member subscribes its worker to Redis; publish until every client hears.
    for n in range(100):
        await first.publish(f"warm-up {n}")
        await asyncio.sleep(0.05)
        if all(client.received for client in clients):
            break
    await until(lambda: all(client.received for client in clients), "every client hears")

    await first.publish("from the first worker")
    await until(lambda: "from the first worker" in first.received, "Redis has it")
    await second.publish("from the second worker")
    await until(lambda: "from the second worker" in second.received, "Redis has it")
    await first.publish("end")  # Redis's one order: after both, for every subscriber
    await until(lambda: all("end" in client.received for client in clients), "all got the end")
    for client in clients:
        counts = Counter(client.received)
        assert counts["from the first worker"] == 1, client.received
        assert counts["from the second worker"] == 1, client.received

    # Whichever worker answers a scrape reports the sum over both (multiprocess mode).
    open_connections = scrape(server)[("realtime_connections", (("transport", "ws"),))]
    assert open_connections == len(clients)

    secret = f"s3cret-{os.urandom(8).hex()}"
    send_every_target_form(server, secret)
    for client in clients:
        await client.close()
    assert server.stop() in (0, -15), server.output()
    output = server.output()
    for leaked in (secret, *server.http_params.values()):
        assert leaked not in output, f"{leaked} was logged"
    pids = {line["pid"] for line in json_lines(server) if line["logger"].startswith("uvicorn")}
    assert set(workers) < pids, "the supervisor and both workers log in JSON"
