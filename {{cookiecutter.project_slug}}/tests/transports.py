"""Transports (hub.py) that stand in for a client's socket, for tests that drive the hub."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from {{ cookiecutter.package_name }}.hub import Frame


class Recorder:
    """A transport that only writes by awaiting (as SSE does): records the texts of its batches,
    or blocks forever like a client that never reads."""

    heartbeat: ClassVar[bool] = True
    can_write_now: ClassVar[bool] = False

    def __init__(self, *, stalled: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.stalled = stalled

    def try_write(self, frames: list[Frame]) -> bool:
        return False

    async def write(self, frames: list[Frame]) -> None:
        if self.stalled:
            await asyncio.Event().wait()
        self.batches.append([frame.text for frame in frames])

    @property
    def frames(self) -> list[str]:
        return [frame for batch in self.batches for frame in batch]


class Socket(Recorder):
    """A socket that can also be written without waiting while `writable`, as the server's is."""

    can_write_now: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.written_now: list[list[str]] = []
        self.writable = True
        self.broken = False

    def try_write(self, frames: list[Frame]) -> bool:
        if self.broken:
            raise OSError("the transport is gone")
        if self.writable:
            self.written_now.append([frame.text for frame in frames])
        return self.writable


class Stream(Recorder):
    """A transport to which the heartbeat does not apply, as an SSE stream's."""

    heartbeat: ClassVar[bool] = False
