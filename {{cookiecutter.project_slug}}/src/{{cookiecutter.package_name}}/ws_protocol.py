"""uvicorn's sans-I/O WebSocket protocol, minus the handshake it keeps for a socket's life.

uvicorn holds each connection's upgrade request and response, and websockets' parser holds the
request too, for as long as the socket is open, though neither is read again once the handshake
is answered. Emptying their headers then saves a few KB per idle connection, which is most of
what a process holds per client (measured at 10,000 connections: README, "Benchmarks").
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

__all__ = ["WebSocketProtocol"]


class WebSocketProtocol(WebSocketsSansIOProtocol):
    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept":
            # getattr: should uvicorn rename these, nothing is trimmed and nothing breaks.
            for handshake in (getattr(self, "request", None), getattr(self, "response", None)):
                headers = getattr(handshake, "headers", None)
                if headers is not None:
                    headers.clear()
