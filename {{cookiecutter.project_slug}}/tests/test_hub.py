"""The Hub and its connections, driven directly: outboxes, the slow-consumer policy, rooms."""

from __future__ import annotations

import asyncio

import pytest
from starlette import status

from {{ cookiecutter.package_name }}.hub import (
    QUIET_SECONDS,
    Connection,
    ConnectionState,
    Frame,
    Hub,
    SlowConsumerPolicy,
)

from .transports import Recorder, Socket

pytestmark = pytest.mark.anyio


def connect(
    hub: Hub,
    recorder: Recorder,
    *,
    limit: int = 8,
    policy: SlowConsumerPolicy = SlowConsumerPolicy.CLOSE,
    batch_bytes: int = 0,
) -> Connection:
    connection = Connection(
        recorder,
        hub.scheduler,
        user="u",
        outbox_limit=limit,
        policy=policy,
        batch_bytes=batch_bytes,
    )
    hub.add(connection)
    hub.join(connection, "r")
    connection.start_writer()
    return connection


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_broadcast_reaches_every_member_in_order() -> None:
    hub = Hub()
    recorders = [Recorder() for _ in range(3)]
    connections = [connect(hub, recorder) for recorder in recorders]
    for n in range(5):
        assert hub.deliver("r", f"m{n}") == 3
    await settle()
    for recorder in recorders:
        assert recorder.frames == [f"m{n}" for n in range(5)]
    hub.close_all(status.WS_1001_GOING_AWAY)
    assert all(c.state is ConnectionState.CLOSING for c in connections)


async def test_frames_queued_while_the_writer_was_away_leave_in_batches_of_batch_bytes() -> None:
    hub = Hub()
    one_by_one, batched, capped = Recorder(), Recorder(), Recorder()
    connect(hub, one_by_one)
    connect(hub, batched, batch_bytes=1024)
    connect(hub, capped, batch_bytes=32)  # three 9-character frames and two newlines fit
    for n in range(5):
        hub.deliver("r", f"message-{n}")
    await settle()
    frames = [f"message-{n}" for n in range(5)]
    assert one_by_one.batches == [[frame] for frame in frames]
    assert batched.batches == [frames]
    assert capped.batches == [frames[0:3], frames[3:5]]
    hub.close_all(status.WS_1001_GOING_AWAY)


async def test_a_frame_larger_than_batch_bytes_still_leaves_alone() -> None:
    hub = Hub()
    recorder = Recorder()
    connect(hub, recorder, batch_bytes=4)
    hub.deliver("r", "x" * 100)
    hub.deliver("r", "y")
    await settle()
    assert recorder.batches == [["x" * 100], ["y"]]
    hub.close_all(status.WS_1001_GOING_AWAY)


async def test_a_stalled_client_does_not_hold_up_the_others_and_is_closed_on_overflow() -> None:
    hub = Hub()
    healthy = Recorder()
    stalled = Recorder(stalled=True)
    connect(hub, healthy, limit=4)
    slow = connect(hub, stalled, limit=4)
    for n in range(10):
        hub.deliver("r", f"m{n}")
        await settle()
    assert healthy.frames == [f"m{n}" for n in range(10)]
    assert slow.state is ConnectionState.CLOSING
    assert slow.close_code == status.WS_1013_TRY_AGAIN_LATER
    assert slow.pending == 0, "a condemned connection's outbox is released"


async def test_the_drop_policy_keeps_a_slow_client_and_skips_what_does_not_fit() -> None:
    hub = Hub()
    slow = connect(hub, Recorder(stalled=True), limit=2, policy=SlowConsumerPolicy.DROP)
    assert hub.deliver("r", "first") == 1
    await settle()  # the writer takes it and gets stuck sending it
    delivered = [hub.deliver("r", f"m{n}") for n in range(4)]
    assert slow.state is ConnectionState.OPEN
    assert delivered == [1, 1, 0, 0], "two fit in the outbox, the rest are skipped"
    assert slow.pending == 2


async def test_rooms_exist_only_while_they_have_members() -> None:
    hub = Hub()
    connection = connect(hub, Recorder())
    hub.join(connection, "s")
    assert hub.rooms == {"r": 1, "s": 1}
    assert hub.leave(connection, "s") is True
    assert hub.leave(connection, "s") is False
    assert hub.rooms == {"r": 1}
    hub.remove(connection)
    assert hub.rooms == {}
    assert len(hub) == 0
    assert connection.state is ConnectionState.CLOSED
    assert connection.offer("late") is False


async def test_delivery_to_an_empty_room_reaches_nobody() -> None:
    assert Hub().deliver("nowhere", "m") == 0


async def test_a_writer_starts_once() -> None:
    connection = connect(Hub(), Recorder())
    with pytest.raises(RuntimeError, match="Expected no writer"):
        connection.start_writer()
    connection.close(status.WS_1000_NORMAL_CLOSURE)


async def test_the_hub_says_when_a_room_gets_its_first_member_and_loses_its_last() -> None:
    hub = Hub()
    events: list[str] = []
    hub.on_room_opened = lambda room: events.append(f"+{room}")
    hub.on_room_closed = lambda room: events.append(f"-{room}")
    first, second = connect(hub, Recorder()), connect(hub, Recorder())
    hub.join(first, "other")
    hub.leave(first, "r")
    hub.close_all(status.WS_1001_GOING_AWAY)  # stops the writers; membership is unchanged
    hub.remove(second)
    hub.remove(first)
    assert events == ["+r", "+other", "-r", "-other"]


async def test_after_a_quiet_spell_a_broadcast_is_written_at_once_then_batched_per_step() -> None:
    hub = Hub()
    sockets = [Socket() for _ in range(3)]
    for socket in sockets:
        connect(hub, socket, batch_bytes=1024)
    await settle()  # the writers start and wait
    await asyncio.sleep(QUIET_SECONDS * 2)
    assert hub.deliver("r", "m0") == 3
    assert all(socket.written_now == [["m0"]] for socket in sockets), "written during deliver"
    hub.deliver("r", "m1")  # the hub is busy now: these wait for the end of the step
    hub.deliver("r", "m2")
    assert all(socket.written_now == [["m0"]] for socket in sockets)
    await asyncio.sleep(0)
    for socket in sockets:
        assert socket.written_now == [["m0"], ["m1", "m2"]], "one batch, in order"
        assert socket.batches == [], "the writer task was not involved"
    await asyncio.sleep(QUIET_SECONDS * 2)
    hub.deliver("r", "m3")
    assert all(socket.written_now[-1] == ["m3"] for socket in sockets), "quiet again"
    hub.close_all(status.WS_1001_GOING_AWAY)


async def test_what_cannot_be_written_at_once_goes_to_the_writer_in_order() -> None:
    hub = Hub()
    socket = Socket()
    connection = connect(hub, socket, limit=4)
    await settle()
    await asyncio.sleep(QUIET_SECONDS * 2)
    hub.deliver("r", "m0")
    socket.writable = False  # the client's buffer is full
    hub.deliver("r", "m1")
    hub.deliver("r", "m2")
    await settle()
    socket.writable = True
    hub.deliver("r", "m3")
    await settle()
    assert socket.written_now == [["m0"], ["m3"]]
    assert socket.batches == [["m1"], ["m2"]], "sent by the writer, which waits for the client"
    assert connection.state is ConnectionState.OPEN
    hub.close_all(status.WS_1001_GOING_AWAY)


async def test_a_client_that_cannot_be_written_to_is_still_closed_when_its_outbox_overflows() -> (
    None
):
    hub = Hub()
    socket = Socket()
    socket.stalled = True  # the writer's send never returns, as with a client that stopped
    socket.writable = False
    connection = connect(hub, socket, limit=2)
    await settle()
    for n in range(4):
        await asyncio.sleep(QUIET_SECONDS * 2)  # each one tries to write at once
        hub.deliver("r", f"m{n}")
        await settle()
    assert connection.state is ConnectionState.CLOSING
    assert connection.close_code == status.WS_1013_TRY_AGAIN_LATER
    assert socket.written_now == []


@pytest.mark.parametrize("at_once", [True, False])
async def test_a_write_that_fails_closes_the_connection_with_1011(at_once: bool) -> None:
    hub = Hub()
    socket = Socket()
    connection = connect(hub, socket)
    await settle()
    socket.broken = True
    offered = hub.scheduler.offer(connection, Frame("m0"), at_once)
    assert offered is not at_once
    await settle()
    assert connection.state is ConnectionState.CLOSING
    assert connection.close_code == status.WS_1011_INTERNAL_ERROR
    assert connection.pending == 0
