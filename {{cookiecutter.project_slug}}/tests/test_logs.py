"""What the service writes to its log, read from the output of real server processes."""

from __future__ import annotations

import os
import socket

import pytest

from .conftest import PACKAGE, Server, StartServer

pytestmark = pytest.mark.anyio

# Every documented way to start the service: the arguments of `python`.
WAYS_TO_RUN = {
    "python -m package": ("-m", PACKAGE),
    "python -m package serve": ("-m", PACKAGE, "serve"),
    "uvicorn's command line": ("-m", "uvicorn", "--factory", f"{PACKAGE}.app:create_app"),
}


def exchange(server: Server, head: str) -> bytes:
    """Send a request head on a raw socket; what the server answers before it closes (or goes
    quiet, as an accepted WebSocket does)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(head.encode())
        answer = b""
        try:
            while chunk := raw.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and answer.startswith(b"HTTP/1.1 101"):
                    break
        except TimeoutError:
            pass
    return answer


def targets(server: Server, secret: str) -> list[str]:
    """The request-target forms of RFC 9112 section 3.2, each carrying `secret` in a query string
    where it can (and in a percent-encoded one)."""
    authority = f"127.0.0.1:{server.port}"
    forms = []
    for path in ("/sse", "/ws", "/healthz"):
        forms += [
            f"{path}?token={secret}",  # origin-form
            f"http://{authority}{path}?token={secret}",  # absolute-form
            f"{path.lstrip('/')}?token={secret}",  # no leading slash
            f"{path}%3Ftoken={secret}",  # the question mark percent-encoded
        ]
    return [*forms, "*", f"*?token={secret}"]  # asterisk-form


def send_every_target_form(server: Server, secret: str) -> int:
    """Each target form as a plain request and as a WebSocket upgrade; how many were sent."""
    authority = f"127.0.0.1:{server.port}"
    upgrade = (
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    )
    sent = 0
    for target in targets(server, secret):
        method = "OPTIONS" if target.startswith("*") else "GET"
        for extra in ("Connection: close\r\n", upgrade):
            head = f"{method} {target} HTTP/1.1\r\nHost: {authority}\r\n{extra}\r\n"
            answer = exchange(server, head)
            assert answer.startswith(b"HTTP/1.1 "), (target, answer)
            sent += 1
    return sent


@pytest.mark.parametrize("way", WAYS_TO_RUN)
async def test_no_credential_reaches_the_log_whatever_the_target_form(
    start_server: StartServer, way: str
) -> None:
    server = start_server(*WAYS_TO_RUN[way])
    secret = f"s3cret-{os.urandom(8).hex()}"
    # The test user's credentials too: a token in a query string, or a session cookie.
    cookies = server.ws_headers.get("Cookie", "")
    secrets = [secret, *server.http_params.values(), *(c.partition("=")[2] for c in [cookies] if c)]
    sent = send_every_target_form(server, secret)
    # A real client too, presenting the test user's credentials (a real token, in that mode).
    async with server.connect() as ws:
        await ws.recv()
    assert server.stop() in (0, -15), server.output()
    output = server.output()
    for leaked in secrets:
        assert leaked not in output, f"{leaked} was logged:\n{output}"
    # Each request was logged (or the test proves nothing), its query string redacted.
    assert output.count("[redacted]") >= sent // 2, output
