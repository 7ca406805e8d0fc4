"""Baseline: the raw limit, a plain `websockets` asyncio server using `websockets.broadcast()`,
on uvloop when it is importable (as the service and the uvicorn baselines are).

Same tiny protocol as textbook.py: `welcome` once registered, then every text frame received is
broadcast as it is to every connection, the sender included. Compression off (the service's
setting), websockets' own defaults otherwise: its keepalive pings every 20 s and closes a
connection that does not answer within 20 s, or after the service's HEARTBEAT_INTERVAL_SECONDS
and HEARTBEAT_TIMEOUT_SECONDS when set (the scale workload, C, sets them for every server).

    python raw_websockets.py --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

import websockets
from websockets.asyncio.server import ServerConnection, serve

CONNECTIONS: set[ServerConnection] = set()


async def handler(websocket: ServerConnection) -> None:
    CONNECTIONS.add(websocket)
    try:
        await websocket.send('{"type":"welcome"}')
        async for message in websocket:
            websockets.broadcast(CONNECTIONS, message)
    finally:
        CONNECTIONS.discard(websocket)


async def main(host: str, port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    keepalive = {
        "ping_interval": float(os.environ.get("HEARTBEAT_INTERVAL_SECONDS", "20")),
        "ping_timeout": float(os.environ.get("HEARTBEAT_TIMEOUT_SECONDS", "20")),
    }
    async with serve(handler, host, port, compression=None, max_size=64 * 1024, **keepalive):
        await stop


def event_loop_factory() -> type[asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is importable (the service's virtualenv, which this runs in, has it:
    the service runs on it by default, and the uvicorn baselines take it through `--loop auto`),
    so that the comparison is like for like; asyncio's otherwise, or with SERVER_LOOP=asyncio
    (what `--uvloop` pins every other server to)."""
    if os.environ.get("SERVER_LOOP") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.Loop


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(main(args.host, args.port))
