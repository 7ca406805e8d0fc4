"""Decoding frames: every kind of client mistake becomes a ProtocolError with its own code.
Encoding them: every frame is strict JSON in UTF-8, or refused before it reaches anyone."""

from __future__ import annotations

import json
import logging

import pytest

from {{ cookiecutter.package_name }}.broker import (
    AlreadyPublished,
    BrokerUnavailable,
    LocalBroker,
    PublishOutcomeUnknown,
)
from {{ cookiecutter.package_name }}.hub import Connection, Hub
from {{ cookiecutter.package_name }}.protocol import (
    MAX_DEPTH,
    ErrorCode,
    ErrorReply,
    Protocol,
    ProtocolError,
    Publish,
    UnencodableFrame,
    encode,
    error_frame,
)
from {{ cookiecutter.package_name }}.publishing import Publisher

from .transports import Recorder


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


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    "frame",
    [
        # Lone surrogates: valid JSON on the wire, but no UTF-8 frame can carry them on.
        '{"type": "publish", "data": "\\ud800"}',
        '{"type": "publish", "data": "\\udfff"}',
        '{"type": "publish", "data": "\\udc00\\ud800"}',  # a pair in the wrong order
        '{"type": "publish", "data": {"\\ud800": 1}}',  # in a key
        '{"type": "\\ud800"}',
        '{"type": "publish", "data": "\ud800"}',  # not escaped (no real socket brings it)
        # Not JSON, though json.loads takes them; browsers' JSON.parse does not.
        '{"type": "publish", "data": NaN}',
        '{"type": "publish", "data": Infinity}',
        '{"type": "publish", "data": [-Infinity]}',
        # Deeper than MAX_DEPTH; at a few thousand levels json.loads raised RecursionError.
        '{"type": "publish", "data": ' + nested(MAX_DEPTH) + "}",
        '{"type": "publish", "data": ' + nested(5000) + "}",
    ],
)
def test_what_no_frame_can_carry_is_invalid_json(protocol: Protocol, frame: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        protocol.decode(frame)
    assert raised.value.code is ErrorCode.INVALID_JSON
    assert raised.value.detail.startswith("not valid JSON: ")


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1E+309", "1" + "0" * 400 + ".0"])
def test_a_number_out_of_a_doubles_range_is_refused(protocol: Protocol, number: str) -> None:
    # JSON, but parsed as inf, which has no JSON form to send on.
    with pytest.raises(ProtocolError) as raised:
        protocol.decode('{"type": "publish", "data": {"x": [' + number + "]}}")
    assert raised.value.code is ErrorCode.INVALID_FIELDS
    assert raised.value.detail.endswith(": Input should be a finite number")


def objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("data", [nested(MAX_DEPTH - 1), objects(MAX_DEPTH - 1)])
def test_nesting_up_to_max_depth_is_accepted(protocol: Protocol, data: str) -> None:
    # The envelope is one level: its data may nest MAX_DEPTH - 1 more.
    message, _ = protocol.decode('{"type": "publish", "data": ' + data + "}")
    assert isinstance(message, Publish)


@pytest.mark.parametrize("data", [nested(MAX_DEPTH), objects(MAX_DEPTH)])
def test_one_level_deeper_is_refused_and_says_the_limit(protocol: Protocol, data: str) -> None:
    with pytest.raises(ProtocolError, match=f"nested deeper than {MAX_DEPTH} levels"):
        protocol.decode('{"type": "publish", "data": ' + data + "}")


@pytest.mark.parametrize(
    ("frame", "data"),
    [
        ('{"type": "publish", "data": "\\ud83d\\ude00"}', "\U0001f600"),  # a valid pair
        ('{"type": "publish", "data": "caf\\u00e9 \u65e5\u672c"}', "caf\u00e9 \u65e5\u672c"),
        ('{"type": "publish", "data": 1e308}', 1e308),
        ('{"type": "publish", "data": 1e-400}', 0.0),
        ('{"type": "publish", "data": ' + "9" * 400 + "}", int("9" * 400)),
    ],
)
def test_strict_json_still_decodes(protocol: Protocol, frame: str, data: object) -> None:
    message, _ = protocol.decode(frame)
    assert isinstance(message, Publish)
    assert message.data == data


@pytest.mark.parametrize(
    "payload",
    [
        {"data": float("nan")},
        {"data": [float("inf")]},
        {"data": "\ud800"},
        {"\udc00": 1},
    ],
)
def test_encode_refuses_what_is_not_strict_json_in_utf8(payload: dict[str, object]) -> None:
    with pytest.raises(UnencodableFrame):
        encode(payload)


def test_encode_leaves_utf8_as_is() -> None:
    assert encode({"text": "caf\u00e9 \U0001f600"}) == '{"text":"caf\u00e9 \U0001f600"}'


def test_an_error_frame_escapes_what_utf8_cannot_hold() -> None:
    frame = error_frame(ErrorCode.INVALID_FIELDS, "bad key \ud800")
    assert json.loads(frame.encode())["detail"] == "bad key \\ud800"


@pytest.mark.anyio
async def test_a_publish_without_a_frame_is_refused_to_its_sender_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # What the edge lets through (here: a user name, from credentials, with a lone surrogate)
    # and encode refuses: the sender is told, the others get nothing, and it is logged.
    hub = Hub()
    publisher = Publisher(LocalBroker(hub))
    sender = Connection(Recorder(), hub.scheduler, user="\ud800", outbox_limit=8)
    member = Connection(Recorder(), hub.scheduler, user="member", outbox_limit=8)
    for connection in (sender, member):
        hub.add(connection)
        hub.join(connection, "lobby")
    with caplog.at_level(logging.WARNING), pytest.raises(ProtocolError) as raised:
        await publisher.handle(sender, Publish(type="publish", data="hi"))
    assert raised.value.code is ErrorCode.INVALID_JSON
    assert (sender.pending, member.pending) == (0, 0), "nothing reached the room"
    [record_] = caplog.records
    assert record_.levelno == logging.WARNING
    assert sender.id in record_.getMessage()


def test_a_broker_failure_is_an_error_reply_but_no_client_mistake() -> None:
    failures = [BrokerUnavailable("down"), PublishOutcomeUnknown("late"), AlreadyPublished("1-1")]
    for failure in failures:
        assert isinstance(failure, ErrorReply), "the client is told, with a frame or a status"
        assert not isinstance(failure, ProtocolError), failure
    # Their codes are part of the protocol: stable.
    assert [failure.code for failure in failures] == [
        "broker_unavailable",
        "publish_outcome_unknown",
        "already_published",
    ]
