"""The GC pacer: survivors frozen, young collections rare, a full one only past a growth bound."""

from __future__ import annotations

import asyncio
import gc
import math
import sys
import weakref
from typing import Any, Literal

import pytest
import uvicorn
from websockets.asyncio.client import connect

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.gc_pacing import YOUNG_THRESHOLD, GcPacer
from {{ cookiecutter.package_name }}.hub import Connection
from {{ cookiecutter.package_name }}.protocol import Message
from {{ cookiecutter.package_name }}.settings import Settings
from {{ cookiecutter.package_name }}.ws_protocol import WebSocketProtocol

from .conftest import free_port

pytestmark = pytest.mark.anyio

# Never on its own during a test: each test calls `step()` itself, where it must.
NEVER = 3600.0


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only a collection can free it


def full_collections() -> tuple[list[int], Any]:
    """The objects each full collection from now on frees, and the callback to remove."""
    found: list[int] = []

    def record(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 2:
            found.append(info["collected"])

    gc.callbacks.append(record)
    return found, record


async def test_frozen_garbage_waits_for_the_growth_bound_and_stop_restores() -> None:
    thresholds = gc.get_threshold()
    found, record = full_collections()
    pacer = GcPacer(growth_percent=5, freeze_every=NEVER)
    try:
        pacer.start()
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD
        garbage = Node()
        dead = weakref.ref(garbage)
        assert not pacer.step(), "under the bound: no full collection"
        del garbage  # garbage now, and frozen: young collections do not examine it
        gc.collect(1)
        assert dead() is not None
        assert not pacer.step()
        assert dead() is not None, "under the bound it waits"
        # Frozen garbage past the bound: the step that finds it collects it all.
        for _ in range(1000):
            for _ in range(1000):
                Node()
            if pacer.step():
                break
        else:
            pytest.fail(f"no full collection at {sys.getallocatedblocks()} memory blocks")
        assert dead() is None, "the full collection reclaims it"
        assert found
        assert found[-1] > 0
        assert sys.getallocatedblocks() <= pacer.limit
    finally:
        await pacer.stop()
        gc.callbacks.remove(record)
    assert gc.get_freeze_count() == 0, "stopping undoes the freeze"
    assert gc.get_threshold() == thresholds, "and the threshold"


async def test_the_pacer_freezes_on_its_own() -> None:
    pacer = GcPacer(growth_percent=100, freeze_every=0.01)
    pacer.start()
    try:
        survivor = Node()
        for _ in range(500):  # bounded: the pacer's task runs within a few loop turns
            if gc.get_freeze_count() and survivor not in gc.get_objects():
                break
            await asyncio.sleep(0.01)
        assert survivor not in gc.get_objects(), "frozen: out of every generation collected"
    finally:
        await pacer.stop()


async def test_two_apps_pace_one_collector_and_the_last_to_stop_restores_it() -> None:
    # Tests (and any process with two apps) start and stop pacers in any order: the first
    # app to stop must not unfreeze, or reset the threshold under, the one still serving.
    before = gc.get_threshold()
    first = GcPacer(growth_percent=100, freeze_every=NEVER)
    second = GcPacer(growth_percent=100, freeze_every=NEVER)
    first.start()
    second.start()
    try:
        await first.stop()
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD, "still pacing for the second app"
        assert gc.get_freeze_count() > 0, "its survivors still frozen"
    finally:
        await second.stop()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_zero_leaves_cpythons_schedule() -> None:
    thresholds = gc.get_threshold()
    pacer = GcPacer(growth_percent=0)
    pacer.start()
    await asyncio.sleep(0)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == thresholds
    await pacer.stop()


async def test_log_reports_every_collection_with_its_pause_until_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pacer = GcPacer(growth_percent=0, log=True)
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


async def test_with_the_log_pacing_opens_with_a_logged_full_collection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pacer = GcPacer(growth_percent=100, freeze_every=NEVER, log=True)
    pacer.start()
    await pacer.stop()
    pauses = [r.getMessage() for r in caplog.records if r.getMessage().startswith("gc pause:")]
    assert any("generation=2" in pause for pause in pauses), caplog.text


async def test_log_off_by_default_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    pacer = GcPacer(growth_percent=0)
    pacer.start()
    gc.collect()
    await pacer.stop()
    assert "gc pause:" not in caplog.text


# --- cyclic garbage made by a client --------------------------------------------------------

# Lists in each client's piece of garbage (a cycle holding a list of them): its memory blocks,
# give or take the few of the cycle itself.
BALLAST = 200
PER_ROUND = 50


class Garbage:
    """What a handler that makes a reference cycle per message leaves behind."""

    alive = 0

    def __init__(self) -> None:
        Garbage.alive += 1
        self.me = self
        self.ballast: list[list[int]] = [[] for _ in range(BALLAST)]

    def __del__(self) -> None:
        Garbage.alive -= 1


class MakeGarbage(Message):
    type: Literal["garbage"]


async def make_garbage(connection: Connection, message: MakeGarbage) -> None:
    Garbage()


async def client_garbage(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    pacer: GcPacer,
    garbage_blocks: int,
) -> tuple[int, int, list[str]]:
    """A real server whose handler makes a reference cycle per message, `pacer` stepped once
    per round of messages (as its task does each second), and a client sending them: the most
    pieces of garbage alive at once, how many it made, and what the pacer logged."""
    monkeypatch.setenv("SERVER_GC_GROWTH_PERCENT", "0")  # the app's own pacer stays off
    monkeypatch.setenv("HUB_RATE_PER_SECOND", "1000000")
    monkeypatch.setenv("HUB_RATE_BURST", "1000000")
    app = create_app(Settings())
    app.state.protocol.on("garbage", MakeGarbage, make_garbage)
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, ws=WebSocketProtocol, log_level="warning"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    most = made = 0
    try:
        for _ in range(100):
            if server.started:
                break
            await asyncio.sleep(0.05)
        Garbage.alive = 0
        pacer.start()
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.recv()  # welcome
            rounds = math.ceil(garbage_blocks / (PER_ROUND * BALLAST))
            for _ in range(rounds):
                for _ in range(PER_ROUND):
                    await ws.send('{"type":"garbage"}')
                await ws.send("not json")  # answered once the round is handled
                while "error" not in str(await ws.recv()):
                    pass
                made += PER_ROUND
                pacer.step()
                most = max(most, Garbage.alive)
    finally:
        await pacer.stop()
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        gc.collect()
    logged = [r.getMessage() for r in caplog.records if r.name == GcPacer.__module__]
    return most, made, logged


async def test_cyclic_garbage_a_client_makes_stays_within_the_growth_bound(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gc.collect()
    heap = sys.getallocatedblocks()
    pacer = GcPacer(growth_percent=10, freeze_every=NEVER)
    # Five times the garbage the bound allows: without the valve it would all stay.
    most, made, logged = await client_garbage(monkeypatch, caplog, pacer, heap // 2)
    bound = heap * 0.1 * 1.5 / BALLAST + PER_ROUND  # the bound, of a heap grown a little
    assert most <= bound, f"{most} pieces alive at once, of {made} made (bound {bound:.0f})"
    assert made > 2 * bound
    valve = [line for line in logged if line.startswith("gc full collection:")]
    assert len(valve) >= 2, logged
    assert "over the limit of" in valve[0], valve


async def test_without_the_valve_the_same_garbage_would_stay(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The control: the garbage above escapes the young collections (too few new objects to
    start one before the step freezes them), so only the valve reclaims it."""
    gc.collect()
    heap = sys.getallocatedblocks()
    pacer = GcPacer(growth_percent=10**9, freeze_every=NEVER)
    most, made, logged = await client_garbage(monkeypatch, caplog, pacer, heap // 10)
    assert most == made, f"{made - most} of {made} reclaimed without the valve"
    assert not [line for line in logged if line.startswith("gc full collection:")], logged
