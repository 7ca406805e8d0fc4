"""Hostile handshakes: whatever bytes a client puts in its headers or its query string, the
answer is a 4xx (or a success), never a 5xx, and the server lives on for everyone else.

Hypothesis writes the requests byte by byte on a raw socket to a real uvicorn, since HTTP
clients refuse to send most of what an attacker would: a header value may hold any byte but
CR, LF and NUL (obs-text, 0x80 to 0xFF, is read as latin-1).
"""

from __future__ import annotations

import base64
import os
import socket
from dataclasses import dataclass
from urllib.parse import quote_from_bytes, urlencode

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Server, StartServer

# Each example is one request on its own connection: a few hundred stay well under a minute.
EXAMPLES = 300
HEADERS = (
    "Cookie",
    "Origin",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Extensions",
    "Last-Event-ID",
)
QUERY = "query string"
# Query parameters the service reads, each given a hostile value of its own.
PARAMETERS = ("?room=", "?lastEventId=", "?token=")
ROUTES = ["/ws"]
{%- if cookiecutter.use_sse %}
ROUTES += ["/sse", "/publish"]
{%- endif %}


@dataclass(frozen=True)
class Fuzz:
    """One hostile request: which route, which part of it, and the bytes that go there, either
    after the value a well-behaved client sends (a valid cookie with a stray byte) or instead."""

    route: str
    part: str
    value: bytes
    append: bool


header_bytes = st.binary(max_size=48).map(
    lambda value: value.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"")
)
fuzzes = st.builds(
    Fuzz,
    route=st.sampled_from(ROUTES),
    part=st.sampled_from((*HEADERS, QUERY, *PARAMETERS)),
    value=header_bytes,
    append=st.booleans(),
)


def well_behaved(server: Server, route: str) -> tuple[str, bytes, dict[str, bytes]]:
    """The method, target and headers of a request the server accepts."""
    headers = {"Host": f"127.0.0.1:{server.port}".encode()}
    if route == "/ws":
        target = server.ws_path
        headers |= {
            "Upgrade": b"websocket",
            "Connection": b"Upgrade",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)),
            "Sec-WebSocket-Version": b"13",
        }
        headers |= {name: value.encode() for name, value in server.ws_headers.items()}
        return "GET", target.encode(), headers
    query = urlencode(server.http_params)
    target = f"{route}?{query}" if query else route
    headers |= {name: value.encode() for name, value in server.http_headers.items()}
    if route == "/publish":
        headers |= {"Content-Type": b"application/json", "Content-Length": b"13"}
        return "POST", target.encode(), headers
    return "GET", target.encode(), headers


def hostile_request(server: Server, fuzz: Fuzz) -> bytes:
    method, target, headers = well_behaved(server, fuzz.route)
    # Percent-escapes for what a request target cannot hold raw, and `%` itself left raw, so
    # that broken escapes are sent too.
    escaped = quote_from_bytes(fuzz.value, safe="=&;+%").encode()
    if fuzz.part == QUERY and fuzz.append:
        target += escaped  # into the last value there is: the token, if any
    elif fuzz.part == QUERY:
        target += (b"&" if b"?" in target else b"?") + escaped
    elif fuzz.part in PARAMETERS:
        parameter = fuzz.part[1:].encode()
        target += (b"&" if b"?" in target else b"?") + parameter + escaped
    else:
        before = headers.get(fuzz.part, b"") if fuzz.append else b""
        headers[fuzz.part] = before + fuzz.value
    lines = [method.encode() + b" " + target + b" HTTP/1.1"]
    lines += [name.encode() + b": " + value for name, value in headers.items()]
    body = b'{"data": "x"}' if fuzz.route == "/publish" else b""
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def status_of(server: Server, request: bytes) -> int:
    """The status code the server answers `request` with."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(request)
        answer = b""
        while b"\r\n" not in answer:
            chunk = raw.recv(4096)
            assert chunk, f"connection closed with no answer to {request!r}"
            answer += chunk
    return int(answer.split(b" ", 2)[1])


@pytest.mark.slow
def test_no_header_or_query_string_gets_a_server_error(start_server: StartServer) -> None:
    server = start_server()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(fuzz=fuzzes)
    def answered_without_a_server_error(fuzz: Fuzz) -> None:
        request = hostile_request(server, fuzz)
        status = status_of(server, request)
        assert status < 500, f"{status} for {request!r}"

    answered_without_a_server_error()
    assert server.process.poll() is None, server.output()
    assert httpx2.get(f"{server.http_url}/healthz", timeout=5).status_code == 200
    assert "Traceback" not in server.output(), server.output()


def test_a_well_behaved_request_passes(start_server: StartServer) -> None:
    """The fuzzing above starts from requests that work: a refusal there means something."""
    server = start_server()
    for route in ROUTES:
        headers = well_behaved(server, route)[2]
        fuzz = Fuzz(route, "Cookie", headers.get("Cookie", b""), append=False)
        expected = 101 if route == "/ws" else 200
        assert status_of(server, hostile_request(server, fuzz)) == expected, route


def test_an_upgrade_request_that_cannot_be_parsed_gets_400_and_is_closed(
    start_server: StartServer,
) -> None:
    # h11 lets a control character in a header value through; websockets' parser refuses it,
    # after which uvicorn alone would answer nothing and hold the socket open.
    server = start_server()
    fuzz = Fuzz("/ws", "Sec-WebSocket-Protocol", b"chat\x01", append=False)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(hostile_request(server, fuzz))
        answer = b""
        while chunk := raw.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 "), answer
