"""Exit signals are the process's: every subscriber hears them, the server's handler runs
after, and it is back once the last subscriber leaves, whichever leaves first."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from types import FrameType

import pytest

from {{ cookiecutter.package_name }}.exit_signals import on_exit_signal

pytestmark = pytest.mark.anyio


@pytest.fixture
def server_handler() -> Iterator[list[int]]:
    """A SIGTERM handler standing in for the server's; records the signals it gets."""
    received: list[int] = []

    def handler(number: int, frame: FrameType | None) -> None:
        received.append(number)

    before = signal.signal(signal.SIGTERM, handler)
    yield received
    signal.signal(signal.SIGTERM, before)


async def sigterm() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.sleep(0.05)  # the handler schedules the callbacks; let them run


async def test_two_apps_hear_the_signal_and_either_may_leave_first(
    server_handler: list[int],
) -> None:
    server = signal.getsignal(signal.SIGTERM)
    heard: list[str] = []
    leave_first = on_exit_signal(lambda: heard.append("first"))
    leave_second = on_exit_signal(lambda: heard.append("second"))
    await sigterm()
    assert heard == ["first", "second"]
    assert server_handler == [signal.SIGTERM], "the server's handler ran after them"

    leave_first()  # the first app stops: the second still hears it
    heard.clear()
    await sigterm()
    assert heard == ["second"]

    leave_second()
    assert signal.getsignal(signal.SIGTERM) is server, "the server's own handler is back"
    heard.clear()
    await sigterm()
    assert heard == []
    assert server_handler == [signal.SIGTERM] * 3
