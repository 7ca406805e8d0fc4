"""SSE baseline: FastAPI's own `fastapi.sse` (FastAPI 0.135 and later), a path operation that
yields events, over a queue per stream (sse_common)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi.sse import EventSourceResponse, ServerSentEvent
from sse_common import RETRY_MILLISECONDS, Streams, publishing_app

streams = Streams()
app = publishing_app(streams)


@app.get("/sse", response_class=EventSourceResponse)
async def stream() -> AsyncIterator[ServerSentEvent]:
    yield ServerSentEvent(retry=RETRY_MILLISECONDS)
    async for message in streams.messages():
        # raw_data: the published frame is JSON already (data= would encode it again).
        yield ServerSentEvent(raw_data=message)
