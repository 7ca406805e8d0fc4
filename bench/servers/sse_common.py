"""What the two SSE baselines share: the textbook shape (a queue per stream, fed by a broadcast
loop that never awaits a client) and the bench's way in for its publisher.

The publisher is the bench's WebSocket client: on /ws it gets a `welcome` frame, then every text
frame it sends is put in every stream's queue and echoed back to it (its echoes pace it), so
one publisher drives the service and the baselines alike. Each stream first sends a `retry:`
hint, as the service does, which tells the bench's client that the stream is open.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

__all__ = ["RETRY_MILLISECONDS", "Streams", "publishing_app"]

RETRY_MILLISECONDS = 3000


class Streams:
    """The queue of every open stream."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[str]] = set()

    def broadcast(self, message: str) -> None:
        for queue in self.queues:
            queue.put_nowait(message)

    async def messages(self) -> AsyncIterator[str]:
        """One stream's messages, for as long as it is open."""
        queue: asyncio.Queue[str] = asyncio.Queue()
        self.queues.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self.queues.discard(queue)


def publishing_app(streams: Streams) -> FastAPI:
    """A FastAPI app whose /ws broadcasts every text frame to `streams` and echoes it back."""
    app = FastAPI()

    @app.websocket("/ws")
    async def publish(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text('{"type":"welcome"}')
        try:
            while True:
                message = await websocket.receive_text()
                streams.broadcast(message)
                await websocket.send_text(message)
        except WebSocketDisconnect:
            pass

    return app
