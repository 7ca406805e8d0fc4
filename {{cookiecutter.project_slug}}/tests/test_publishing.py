"""Publishing with the sender's own key: a retry is not delivered twice (in memory, or in
Redis when the service uses it), and one sender's keys do not touch another's."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient

from {{ cookiecutter.package_name }}.broker import RecentKeys
from {{ cookiecutter.package_name }}.protocol import DEFAULT_ROOM

from .messages import receive

ROOM = DEFAULT_ROOM


def test_a_publish_with_a_key_used_before_is_not_delivered_again(client: TestClient) -> None:
    key = f"client-chosen-{uuid.uuid4()}"  # a Redis shared between runs remembers keys
    with client.websocket_connect("/ws") as sender, client.websocket_connect("/ws") as member:
        for ws in (sender, member):
            assert receive(ws)["type"] == "welcome"
        publish = {"type": "publish", "room": ROOM, "data": "once", "key": key}
        sender.send_json(publish)
        for ws in (sender, member):
            message = receive(ws)
            assert (message["data"], message["key"]) == ("once", key)
        sender.send_json(publish)  # the retry
        refused = receive(sender)
        assert refused["type"] == "error"
        assert refused["code"] == "already_published", refused
        sender.send_json({"type": "publish", "room": ROOM, "data": "next"})
        for ws in (sender, member):
            assert receive(ws)["data"] == "next", "nothing in between: the retry was dropped"


def test_a_key_is_checked_for_length(client: TestClient) -> None:
    with client.websocket_connect("/ws") as ws:
        assert receive(ws)["type"] == "welcome"
        for key in ("", "k" * 129):
            ws.send_json({"type": "publish", "room": ROOM, "data": 1, "key": key})
            assert receive(ws)["code"] == "invalid_fields"


def test_recent_keys_forget_the_oldest_past_their_limit() -> None:
    keys = RecentKeys(window=60, limit=2)
    for n in range(3):
        keys.add(ROOM, f"k{n}", str(n))
    assert keys.earlier(ROOM, "k0") == (False, None)
    assert keys.earlier(ROOM, "k2") == (True, "2")
    assert keys.earlier("elsewhere", "k2") == (False, None)
{%- if cookiecutter.use_sse %}


def test_a_post_with_a_key_used_before_answers_with_the_first_id(client: TestClient) -> None:
    body = {"room": ROOM, "data": "once", "key": f"client-chosen-{uuid.uuid4()}"}
    first = client.post("/publish", json=body)
    assert first.status_code == 200, first.text
    again = client.post("/publish", json=body)
    assert again.status_code == 200, again.text
    assert again.json() == {"room": ROOM, "id": first.json()["id"], "duplicate": True}
{%- endif %}
