"""The GC pacer: survivors frozen out of automatic collections, a full one on its schedule."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest

from {{ cookiecutter.package_name }}.gc_pacing import GcPacer

pytestmark = pytest.mark.anyio


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only a collection can free it


async def test_frozen_garbage_waits_for_the_full_collection_and_stop_unfreezes() -> None:
    full_collections: list[int] = []

    def record(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 2:
            full_collections.append(info["collected"])

    gc.callbacks.append(record)
    pacer = GcPacer(full_every=0.6, freeze_every=0.05)
    try:
        pacer.start()
        garbage = Node()
        dead = weakref.ref(garbage)
        await asyncio.sleep(0.2)  # a survivor: frozen by now
        assert gc.get_freeze_count() > 0
        del garbage
        gc.collect(1)
        assert dead() is not None, "frozen: young collections do not examine it"
        for _ in range(60):  # the pacer's full collection, within a few seconds at most
            if dead() is None:
                break
            await asyncio.sleep(0.05)
        assert dead() is None, "the paced full collection reclaims it"
        assert full_collections, "it was a full collection"
    finally:
        await pacer.stop()
        gc.callbacks.remove(record)
    assert gc.get_freeze_count() == 0, "stopping undoes the freeze"


async def test_zero_leaves_cpythons_schedule() -> None:
    pacer = GcPacer(full_every=0)
    pacer.start()
    await asyncio.sleep(0)
    assert gc.get_freeze_count() == 0
    await pacer.stop()


async def test_log_reports_every_collection_with_its_pause_until_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pacer = GcPacer(full_every=0, log=True)
    pacer.start()
    try:
        garbage = Node()
        del garbage
        gc.collect()
    finally:
        await pacer.stop()
    pauses = [r.getMessage() for r in caplog.records if r.getMessage().startswith("gc pause:")]
    assert pauses, caplog.text
    assert "generation=2" in pauses[-1], pauses
    assert float(pauses[-1].rsplit("pause_ms=", 1)[1]) >= 0, pauses
    caplog.clear()
    gc.collect()
    assert "gc pause:" not in caplog.text, "stopping removes the hook"


async def test_log_off_by_default_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    pacer = GcPacer(full_every=0)
    pacer.start()
    gc.collect()
    await pacer.stop()
    assert "gc pause:" not in caplog.text
