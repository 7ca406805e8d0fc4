"""Garbage-collector pacing: no collection walks every connection's objects while serving.

Each open connection holds some 90 GC-tracked objects (its task, coroutines, ASGI scope and
protocol state, measured), so at 10,000 connections a full (generation 2) collection walks a
million objects and stops the event loop for over a second: every message being fanned out,
and every heartbeat, waits for it. CPython starts one whenever the objects promoted to the old
generation since the last one exceed a quarter of it, at moments unrelated to traffic.

A full collection is only needed for cyclic garbage, and a connection's life makes none (its
objects are freed by reference counting the moment it closes; tests/test_reference_cycles.py),
nor does a bad frame. So `GcPacer`:

- moves every survivor into the permanent generation each second (`gc.freeze()`, constant
  time), so that no automatic collection examines objects older than that;
- raises the young generation's threshold from 700 to `YOUNG_THRESHOLD` new objects: young
  collections were measured costing 20 to 40 ms of CPU each (over 100 ms of wall time) while a
  heartbeat tick's 10,000 pongs were read, finding nothing to free. Each pong replaces a
  connection's long-lived objects (its receive coroutines and future, the reader's handle,
  the parser's frame) with new ones, which CPython's counter nets out, so the young generation
  holds tens of thousands of live objects of thousands of connections, each a cache miss to
  walk, while 700 new ones start a collection. Past the threshold, a second's worth of
  objects that did not die young (a process growing fast, or garbage being made) is still
  collected while young;
- collects fully only as a safety valve, when the memory blocks Python has allocated
  (`sys.getallocatedblocks()`: the objects alive, or garbage) have grown by `growth_percent`
  since the last full collection, like Go's GOGC: cyclic garbage that no young collection
  reached before it was frozen (with the threshold this high, most of it) is bounded by that
  share of the live heap whatever clients do, and a full collection costs a constant amount
  per object grown, however often it is forced. Blocks, not `gc.get_freeze_count()`, which
  walks every frozen object to count them: 8 ms per million, each second, measured.
  While a process grows (connections opening) the valve runs each time it has grown by that
  share, each pause in proportion to the process then; at a steady number of connections it
  does not run at all. Each run is logged, with its reason.

With `log` (SERVER_GC_LOG), every collection, automatic or paced, is logged with its generation,
the objects it freed and how long it stopped the loop: the pauses themselves, measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import time
from typing import Any

__all__ = ["YOUNG_THRESHOLD", "GcPacer"]

logger = logging.getLogger(__name__)

# New tracked objects (net of those freed) that start a young collection while pacing, instead
# of CPython's 700: far more than the busiest second of 10,000 connections makes and keeps
# (a heartbeat tick), far less than the objects a second of connections opening makes.
YOUNG_THRESHOLD = 100_000


class _ProcessState:
    """The collector is the process's, not an app's: what pacing changed in it, and how many
    pacers (one per app; tests build several in one process) are pacing. The first to start
    changes it, the last to stop puts it back, so no app unfreezes another's objects."""

    def __init__(self) -> None:
        self.pacers = 0
        self.thresholds: tuple[int, int, int] = gc.get_threshold()  # CPython's, while pacing
        # The memory blocks right after the last full collection: what the valve grows from.
        self.base = 0


_process = _ProcessState()


class GcPacer:
    """Freezes survivors every `freeze_every` seconds and collects fully only when the frozen
    objects have grown by `growth_percent` since the last full collection (or start);
    `growth_percent` 0 leaves CPython's own schedule. With `log`, logs every collection's pause.
    """

    def __init__(
        self, growth_percent: float, freeze_every: float = 1.0, *, log: bool = False
    ) -> None:
        self.growth_percent = growth_percent
        self.freeze_every = freeze_every
        self.log = log
        self._task: asyncio.Task[None] | None = None
        self._started_ns = 0

    @property
    def limit(self) -> int:
        """The memory blocks past which the next `step` runs a full collection."""
        return int(_process.base * (1 + self.growth_percent / 100))

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        # Called by CPython before and after each collection, on the thread that collects.
        if phase == "start":
            self._started_ns = time.perf_counter_ns()
            return
        pause_ms = (time.perf_counter_ns() - self._started_ns) / 1e6
        # WARNING: an opt-in diagnostic, shown whatever the log level (uvicorn's configuration
        # leaves the application's loggers at Python's default, WARNING).
        logger.warning(
            "gc pause: generation=%d collected=%d pause_ms=%.3f",
            info["generation"],
            info["collected"],
            pause_ms,
        )

    def start(self) -> None:
        if self.log and self._on_collection not in gc.callbacks:
            gc.callbacks.append(self._on_collection)
        if self.growth_percent > 0 and self._task is None:
            # The modules and the app: nothing to reclaim there, ever. Frozen, not collected
            # first (a pause at every start, every test's app, for the little garbage of
            # imports), unless pauses are logged: then the log opens with what a full
            # collection costs before any client, and shows that it works.
            if _process.pacers == 0:
                if self.log:
                    self._collect_fully()
                else:
                    gc.freeze()
                    _process.base = _blocks()
                _process.thresholds = gc.get_threshold()
                gc.set_threshold(YOUNG_THRESHOLD, *_process.thresholds[1:])
            _process.pacers += 1
            self._task = asyncio.create_task(self._pace(), name="gc-pacer")

    async def stop(self) -> None:
        """Stop pacing; the last pacer of the process to stop undoes the freeze and the
        threshold."""
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            _process.pacers -= 1
            if _process.pacers == 0:  # the last pacer: the collector is CPython's again
                gc.unfreeze()
                gc.set_threshold(*_process.thresholds)

    async def _pace(self) -> None:
        while True:
            await asyncio.sleep(self.freeze_every)
            self.step()

    def step(self) -> bool:
        """Freeze the survivors; then, if the memory blocks have grown past `limit`, collect
        fully (logged, with the reason). True if it did."""
        gc.freeze()
        blocks = _blocks()
        limit = self.limit
        if blocks <= limit:
            return False
        base, started = _process.base, time.perf_counter()
        collected = self._collect_fully()
        # WARNING: a pause in proportion to the whole process, rare by design: seen at any level.
        logger.warning(
            "gc full collection: %d memory blocks, over the limit of %d (%d after the last full "
            "collection, or at start, plus %g%%): collected=%d pause_ms=%.0f, %d blocks after it",
            blocks,
            limit,
            base,
            self.growth_percent,
            collected,
            (time.perf_counter() - started) * 1e3,
            _process.base,
        )
        return True

    def _collect_fully(self) -> int:
        # Unfrozen first: only then does a collection examine, and free, what was frozen.
        gc.unfreeze()
        collected = gc.collect()
        gc.freeze()
        _process.base = _blocks()
        return collected


def _blocks() -> int:
    """What the valve measures: Python's memory blocks (a walk of its pools, about a
    millisecond per gigabyte); on a build that cannot count them (it may answer 0), the frozen
    objects, counted one by one."""
    return sys.getallocatedblocks() or gc.get_freeze_count()
