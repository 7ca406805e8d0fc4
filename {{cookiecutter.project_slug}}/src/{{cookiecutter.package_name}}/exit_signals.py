"""Exit signals, process-wide: callbacks told at once when SIGINT or SIGTERM arrives, before
the server's own handler runs.

uvicorn gives a streaming response no sign of a shutdown: it waits for open responses to end
(SSE streams never do by themselves) before it shuts the app down. A feature holding such
responses subscribes here and ends them itself. Signal handlers belong to the process, not to
an app: they are chained onto the server's once, however many apps subscribe (tests build
several in one process), and put back when the last one unsubscribes, so no app can undo
another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["on_exit_signal"]

EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# Who to tell, on which loop (a handler runs between the main thread's bytecodes, so it may
# only schedule work on a loop, never run it).
_subscribers: list[tuple[asyncio.AbstractEventLoop, Callable[[], None]]] = []
# The server's handlers, called after ours; empty while nobody subscribes.
_previous: dict[int, Callable[[int, FrameType | None], Any]] = {}


def _on_exit_signal(number: int, frame: FrameType | None) -> None:
    for loop, callback in list(_subscribers):
        with contextlib.suppress(RuntimeError):  # that loop is closed: nothing left to end
            loop.call_soon_threadsafe(callback)
    previous = _previous.get(number)
    if previous is not None:
        previous(number, frame)


def on_exit_signal(callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` on the running loop as soon as SIGINT or SIGTERM arrives; returns the
    function that unsubscribes it. Only in the main thread, where the server installs its
    handlers (elsewhere signals cannot be handled, and this does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    subscriber = (asyncio.get_running_loop(), callback)
    if not _subscribers:
        for number in EXIT_SIGNALS:
            previous = signal.getsignal(number)
            if callable(previous):  # not SIG_DFL or SIG_IGN: a server is handling it
                _previous[number] = previous
                signal.signal(number, _on_exit_signal)
    _subscribers.append(subscriber)

    def unsubscribe() -> None:
        with contextlib.suppress(ValueError):
            _subscribers.remove(subscriber)
        if _subscribers:
            return
        for number, previous in _previous.items():
            # Unless someone has replaced ours since: theirs stays.
            if signal.getsignal(number) is _on_exit_signal:
                signal.signal(number, previous)
        _previous.clear()

    return unsubscribe
