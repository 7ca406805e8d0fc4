"""Decoding frames: every kind of client mistake becomes a ProtocolError with its own code."""

from __future__ import annotations

import pytest

from {{ cookiecutter.package_name }}.hub import Connection
from {{ cookiecutter.package_name }}.protocol import ErrorCode, Protocol, ProtocolError, Publish


async def ignore(connection: Connection, message: Publish) -> None:
    return None


@pytest.fixture
def protocol() -> Protocol:
    protocol = Protocol()
    protocol.on("publish", Publish, ignore)
    return protocol


def test_a_valid_frame_decodes_to_its_model(protocol: Protocol) -> None:
    message, handler = protocol.decode('{"type": "publish", "room": "lobby", "data": [1, "x"]}')
    assert message == Publish(type="publish", room="lobby", data=[1, "x"])
    assert handler is ignore


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", ErrorCode.INVALID_JSON),
        ("[1, 2]", ErrorCode.INVALID_MESSAGE),
        ('{"data": 1}', ErrorCode.INVALID_MESSAGE),
        ('{"type": 7}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "dance"}', ErrorCode.UNKNOWN_TYPE),
        ('{"type": "publish"}', ErrorCode.INVALID_FIELDS),
        ('{"type": "publish", "data": 1, "extra": true}', ErrorCode.INVALID_FIELDS),
        ('{"type": "publish", "data": 1, "room": 5}', ErrorCode.INVALID_FIELDS),
    ],
)
def test_bad_frames_raise_with_their_code(protocol: Protocol, frame: str, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as raised:
        protocol.decode(frame)
    assert raised.value.code is code
    assert raised.value.detail


def test_unknown_type_lists_the_known_ones(protocol: Protocol) -> None:
    with pytest.raises(ProtocolError, match="expected one of publish"):
        protocol.decode('{"type": "dance"}')


def test_a_type_has_one_handler(protocol: Protocol) -> None:
    with pytest.raises(ValueError, match="one handler"):
        protocol.on("publish", Publish, ignore)
