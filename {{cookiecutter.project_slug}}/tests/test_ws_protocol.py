"""The lighter uvicorn protocol: its flow-control flag behaves as the Event it replaces."""

from __future__ import annotations

import asyncio

import pytest

from {{ cookiecutter.package_name }}.ws_protocol import WritableFlag

pytestmark = pytest.mark.anyio


async def test_the_writable_flag_holds_senders_only_while_paused() -> None:
    flag = WritableFlag()
    assert flag.is_set()
    await asyncio.wait_for(flag.wait(), 1)  # writable: no wait at all
    flag.clear()  # the transport's buffer is full
    flag.clear()
    senders = [asyncio.create_task(flag.wait()) for _ in range(2)]
    await asyncio.sleep(0.05)
    assert not any(sender.done() for sender in senders), "held while paused"
    flag.set()  # drained
    await asyncio.wait_for(asyncio.gather(*senders), 1)
    assert flag.is_set()
