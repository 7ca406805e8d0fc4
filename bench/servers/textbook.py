"""Baseline: the textbook FastAPI connection manager (a list of sockets, `await send_text` in a
loop), served by uvicorn with its defaults (so per-message deflate is negotiated when the client
offers it, as browsers do).

It speaks just enough of the service's protocol for one client implementation to drive all the
servers: a `welcome` frame once the socket is registered, then every text frame received is
broadcast as it is, to everyone, the sender included.

    uvicorn textbook:app --port 8000
"""

from __future__ import annotations

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI()


class ConnectionManager:
    def __init__(self) -> None:
        self.active_connections: list[WebSocket] = []

    async def connect(self, websocket: WebSocket) -> None:
        await websocket.accept()
        self.active_connections.append(websocket)

    def disconnect(self, websocket: WebSocket) -> None:
        if websocket in self.active_connections:
            self.active_connections.remove(websocket)

    async def broadcast(self, message: str) -> None:
        for connection in list(self.active_connections):
            try:
                await connection.send_text(message)
            except Exception:
                self.disconnect(connection)


manager = ConnectionManager()


@app.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    await manager.connect(websocket)
    try:
        await websocket.send_text('{"type":"welcome"}')
        while True:
            data = await websocket.receive_text()
            await manager.broadcast(data)
    except WebSocketDisconnect:
        manager.disconnect(websocket)
    finally:
        manager.disconnect(websocket)
