"""Reading what the server sends: a text frame holds one or more messages, one per line."""

from __future__ import annotations

import asyncio
import json
import weakref
from collections import deque
from typing import Any

from starlette.testclient import WebSocketTestSession
from websockets.asyncio.client import ClientConnection

# Per connection, the messages of a frame already read that were not returned yet.
_unread: weakref.WeakKeyDictionary[object, deque[str]] = weakref.WeakKeyDictionary()


def receive(ws: WebSocketTestSession) -> dict[str, Any]:
    """The next message on an in-process (TestClient) connection."""
    unread = _unread.setdefault(ws, deque())
    if not unread:
        unread.extend(ws.receive_text().split("\n"))
    return _decode(unread.popleft())


async def next_message(ws: ClientConnection, seconds: float = 10.0) -> dict[str, Any]:
    """The next message on a real connection; TimeoutError after `seconds`."""
    unread = _unread.setdefault(ws, deque())
    if not unread:
        frame = await asyncio.wait_for(ws.recv(), seconds)
        assert isinstance(frame, str), f"expected a text frame, got {frame!r}"
        unread.extend(frame.split("\n"))
    return _decode(unread.popleft())


def _decode(line: str) -> dict[str, Any]:
    message = json.loads(line)
    assert isinstance(message, dict), f"expected a JSON object, got {line!r}"
    return message
