"""SSE baseline: sse-starlette's EventSourceResponse over a queue per stream (sse_common)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sse_common import RETRY_MILLISECONDS, Streams, publishing_app
from sse_starlette import EventSourceResponse, ServerSentEvent

streams = Streams()
app = publishing_app(streams)


@app.get("/sse")
async def stream() -> EventSourceResponse:
    async def events() -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent(retry=RETRY_MILLISECONDS)
        async for message in streams.messages():
            yield ServerSentEvent(data=message)

    return EventSourceResponse(events())
