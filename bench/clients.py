"""Client worker processes: many light WebSocket connections (or SSE streams) per process.

The clients must cost little, since they share two cores with the server under test, so this is
a minimal RFC 6455 client on an asyncio Protocol rather than a full library: it does the
handshake (offering permessage-deflate, as browsers do), reads frame headers, counts complete
messages, answers pings, and only decodes a payload when it needs the publisher's timestamp.

Every timestamp is `time.monotonic_ns()`, which on Linux is CLOCK_MONOTONIC, one clock for every
process on the machine, so a subscriber can subtract the publisher's send time from its own
receive time.

Each worker is a `multiprocessing` process driven over a Pipe by bench/run.py:
``subscriber_main`` opens N connections, says "ready", waits for "collect" and reports counts and
latencies; ``publisher_main`` opens one connection, says "ready", waits for "go" and publishes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import resource
import socket
import time
import zlib
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

__all__ = ["publisher_main", "raise_fd_limit", "subscriber_main"]

_TIMESTAMP = re.compile(rb'"t":(\d+)')
_CODE = re.compile(rb'"code":(\d+)')
_DEFLATE_TAIL = b"\x00\x00\xff\xff"
_ZERO_MASK = b"\x00\x00\x00\x00"  # legal framing; XOR with zero leaves the payload as it is
# The service's application-level heartbeat ping, and a client's answer to it.
_APP_PING = b'"type":"ping"'
_APP_PONG = b'{"type":"pong"}'


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def text_frame(payload: bytes) -> bytes:
    """A masked (client-to-server) text frame."""
    n = len(payload)
    if n < 126:
        header = bytes((0x81, 0x80 | n))
    elif n < 65536:
        header = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
    return header + _ZERO_MASK + payload


class Client(asyncio.Protocol):
    """One WebSocket connection.

    The first message is the server's `welcome` (the baselines send one too) and marks the
    connection ready; every later complete message is counted. With `decode`, each message's
    payload is inflated if compressed and its `"t":<ns>` read into `latencies`.
    """

    def __init__(
        self,
        request: bytes,
        *,
        decode: bool,
        latencies: list[int] | None = None,
        on_message: Any = None,
        pong: bool = False,
    ) -> None:
        self.request = request
        self.decode = decode
        # Answer the service's heartbeat pings (`{"type":"ping"}`) with a pong, as its own
        # client does; without it a connection held past the heartbeat timeout is closed.
        self.pong = pong
        self.pings = 0
        self.latencies = latencies
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.open = False
        self.welcomed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.count = 0
        self.last_ns = 0
        # Called once when `count` reaches `target`, or the connection is lost before.
        self.target = 0
        self.on_done: Any = None
        self.close_code: int | None = None
        self.lost = False
        self.deflate = False
        self.reset_inflater = False
        self.inflater: Any = None
        self.fragments: list[bytes] = []
        self.fragment_rsv1 = False

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.welcomed.done():
            self.welcomed.set_result(False)
        if self.on_message is not None:
            self.on_message(self)
        self._check_done(force=True)

    def _check_done(self, force: bool = False) -> None:
        if self.on_done is not None and (force or self.count >= self.target):
            on_done, self.on_done = self.on_done, None
            on_done(self)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.open and not self._handshake():
            return
        now = time.monotonic_ns()
        offset = 0
        end = len(buffer)
        received = 0
        while end - offset >= 2:
            b0 = buffer[offset]
            length = buffer[offset + 1] & 0x7F
            start = offset + 2
            if length == 126:
                if end - offset < 4:
                    break
                length = int.from_bytes(buffer[offset + 2 : offset + 4], "big")
                start = offset + 4
            elif length == 127:
                if end - offset < 10:
                    break
                length = int.from_bytes(buffer[offset + 2 : offset + 10], "big")
                start = offset + 10
            stop = start + length
            if stop > end:
                break
            opcode = b0 & 0x0F
            if opcode == 1 and buffer.find(_APP_PING, start, stop) >= 0:
                self.pings += 1
                if self.pong:
                    self.send_text(_APP_PONG)
            if opcode < 3:  # continuation, text, binary
                if self.decode or not self.welcomed.done():
                    self._payload(b0, bytes(buffer[start:stop]), now)
                elif b0 & 0x80 and b0 & 0x40:
                    received += 1  # compressed (the textbook's deflate): one message
                elif b0 & 0x80:
                    # A frame may carry several messages, one per line (the service batches);
                    # published ones carry a timestamp, the service's heartbeat pings none.
                    received += buffer.count(b'"t":', start, stop)
            elif opcode == 8:
                code = int.from_bytes(buffer[start : start + 2], "big") if length >= 2 else 1005
                self.close_code = code
            elif opcode == 9 and self.transport is not None:  # ping: answer with a pong
                self.pings += 1
                self.transport.write(bytes((0x8A, 0x80 | length)) + _ZERO_MASK + buffer[start:stop])
            offset = stop
        if offset:
            del buffer[:offset]
        if received:
            self.count += received
            self.last_ns = now
        if self.on_message is not None:
            self.on_message(self)
        if self.on_done is not None and self.count >= self.target:
            self._check_done()

    # --- internals ----------------------------------------------------------------------

    def _handshake(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.buffer[:end]).decode("latin-1")
        del self.buffer[: end + 4]
        status, *headers = head.split("\r\n")
        if " 101 " not in status + " ":
            if not self.welcomed.done():
                self.welcomed.set_result(False)
            if self.transport is not None:
                self.transport.abort()
            return False
        for line in headers:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-extensions" and "permessage-deflate" in value:
                self.deflate = True
                self.reset_inflater = "server_no_context_takeover" in value
                self.inflater = zlib.decompressobj(-15)
        self.open = True
        return True

    def _payload(self, b0: int, payload: bytes, now: int) -> None:
        if not b0 & 0x80:  # a fragment: keep it until the final one
            if b0 & 0x0F:
                self.fragment_rsv1 = bool(b0 & 0x40)
            self.fragments.append(payload)
            return
        rsv1 = bool(b0 & 0x40)
        if self.fragments:
            rsv1 = self.fragment_rsv1
            payload = b"".join([*self.fragments, payload])
            self.fragments.clear()
        if rsv1 and self.deflate:
            if self.reset_inflater:
                self.inflater = zlib.decompressobj(-15)
            payload = self.inflater.decompress(payload + _DEFLATE_TAIL)
        if not self.welcomed.done():
            self.welcomed.set_result(True)
            return
        # Published messages only (they carry a timestamp), not the service's heartbeat pings.
        for message in payload.split(b"\n"):
            match = _TIMESTAMP.search(message)
            if match is None:
                continue
            self.count += 1
            self.last_ns = now
            if self.latencies is not None:
                self.latencies.append(now - int(match.group(1)))

    def send_text(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(text_frame(payload))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # RST, no TIME_WAIT left on the client's ports


class SseClient(Client):
    """One Server-Sent Events stream: a GET whose response body never ends.

    The same counters as a WebSocket connection: its first line (the `retry:` hint the service
    and the baselines send first) marks it ready, and every later line carrying a published
    message's `"t":` counts. The body is read through HTTP/1.1 chunked framing when the server
    uses it (uvicorn does); an `event: close` (the service's last word) or the end of the body
    counts as closed by the server.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chunked = False
        self.chunk_left = 0
        self.lines = bytearray()  # decoded body up to its last complete line

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.open:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).decode("latin-1").lower()
            del buffer[: end + 4]
            if " 200 " not in head.split("\r\n", 1)[0] + " ":
                if not self.welcomed.done():
                    self.welcomed.set_result(False)
                if self.transport is not None:
                    self.transport.abort()
                return
            self.chunked = "transfer-encoding: chunked" in head
            self.open = True
        self.lines += self._dechunk() if self.chunked else self._take_all()
        cut = self.lines.rfind(b"\n")
        if cut < 0:
            return
        lines = bytes(self.lines[: cut + 1])
        del self.lines[: cut + 1]
        now = time.monotonic_ns()
        if not self.welcomed.done():
            self.welcomed.set_result(True)
        received = lines.count(b'"t":')
        if received:
            if self.decode and self.latencies is not None:
                self.latencies.extend(now - int(t) for t in _TIMESTAMP.findall(lines))
            self.count += received
            self.last_ns = now
        if b"event: close" in lines and self.close_code is None:
            self.close_code = int(code.group(1)) if (code := _CODE.search(lines)) else 1000
        if self.on_message is not None:
            self.on_message(self)
        if self.on_done is not None and self.count >= self.target:
            self._check_done()

    def _take_all(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def _dechunk(self) -> bytes:
        """The body bytes of the complete chunk parts in the buffer; a zero-size chunk (the end
        of the response) marks the stream closed by the server."""
        buffer, body = self.buffer, bytearray()
        while True:
            if not self.chunk_left:
                line_end = buffer.find(b"\r\n")
                if line_end < 0:
                    break
                size_line = bytes(buffer[:line_end])
                del buffer[: line_end + 2]
                if not size_line:  # the CRLF that ends a chunk's data
                    continue
                self.chunk_left = int(size_line.split(b";", 1)[0], 16)
                if not self.chunk_left:
                    self.close_code = self.close_code or 1000
                    break
            take = min(self.chunk_left, len(buffer))
            if not take:
                break
            body += buffer[:take]
            del buffer[:take]
            self.chunk_left -= take
        return bytes(body)


def _sse_request(url: str) -> bytes:
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (
        f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: text/event-stream\r\n"
        "Cache-Control: no-cache\r\n\r\n"
    ).encode()


def _request(url: str) -> bytes:
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    ).encode()


async def connect(
    url: str,
    *,
    decode: bool,
    latencies: list[int] | None = None,
    rcvbuf: int | None = None,
    on_message: Any = None,
    timeout: float = 30.0,
    source: str | None = None,
    pong: bool = False,
) -> Client:
    """Open one connection and wait for its welcome frame. `source`: the local address to
    connect from (each loopback address has its own ~28,000 ephemeral ports)."""
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if source:
        sock.bind((source, 0))
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (parts.hostname, parts.port)), timeout)
        # An http:// URL is a Server-Sent Events stream, a ws:// one a WebSocket.
        sse = parts.scheme == "http"
        kind, request = (SseClient, _sse_request(url)) if sse else (Client, _request(url))
        _, client = await loop.create_connection(
            lambda: kind(
                request, decode=decode, latencies=latencies, on_message=on_message, pong=pong
            ),
            sock=sock,
        )
    except BaseException:
        sock.close()
        raise
    try:
        ok = await asyncio.wait_for(asyncio.shield(client.welcomed), timeout)
    except TimeoutError:
        ok = False
    if not ok:
        client.abort()
        raise ConnectionError(f"no welcome from {url}")
    return client


async def _recv(pipe: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, pipe.recv)


# --- subscribers ----------------------------------------------------------------------------


async def _subscribers(pipe: Any, spec: dict[str, Any]) -> dict[str, Any]:
    url = spec["url"]
    decode = spec.get("decode", False)
    stalled = spec.get("stalled", False)
    latencies: list[int] = []
    clients: list[Client] = []
    failed = 0
    semaphore = asyncio.Semaphore(spec.get("concurrency", 50))
    done = asyncio.Event()
    expected = [0]
    remaining = [0]

    def on_done(client: Client) -> None:
        remaining[0] -= 1
        if remaining[0] <= 0:
            done.set()

    async def one() -> None:
        nonlocal failed
        async with semaphore:
            try:
                client = await connect(
                    url,
                    decode=decode,
                    latencies=None if stalled else latencies,
                    rcvbuf=spec.get("rcvbuf"),
                    timeout=spec.get("connect_timeout", 30.0),
                    source=spec.get("source"),
                    pong=spec.get("pong", False),
                )
            except (OSError, ConnectionError, TimeoutError):
                failed += 1
                return
            if stalled and client.transport is not None:
                client.transport.pause_reading()  # a client that stops reading
            clients.append(client)

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(spec["count"])))
    connect_seconds = time.monotonic() - started
    pipe.send(("ready", {"connected": len(clients), "failed": failed}))

    async def wait_for(count: int, deadline: float) -> None:
        """Until every open connection has received `count` messages, or the deadline."""
        done.clear()
        remaining[0] = len(clients)
        for client in clients:
            client.target = count
            client.on_done = on_done
        for client in clients:
            if client.lost:
                client._check_done(force=True)
            else:
                client._check_done()
        if remaining[0] <= 0:
            done.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), max(0.0, deadline - time.monotonic()))

    def counts() -> dict[str, Any]:
        return {
            "connected": len(clients),
            "received": sum(c.count for c in clients),
            "short": sum(1 for c in clients if expected[0] and c.count < expected[0]),
            "last_ns": max((c.last_ns for c in clients), default=0),
            "closed_by_server": sum(1 for c in clients if c.close_code is not None),
            "lost": sum(1 for c in clients if c.lost and c.close_code is None),
            "close_codes": dict(Counter(str(c.close_code) for c in clients if c.close_code)),
            "pings": sum(c.pings for c in clients),
        }

    # "count" (any number of times, connections kept open): wait for `expected` messages each,
    # counted from the last "count" with `reset`, and report the counts; "collect" (last): the
    # same, then the full result, and close.
    command, args = await _recv(pipe)
    while command == "count":
        if args.get("reset"):
            for client in clients:
                client.count = 0
        expected[0] = args["expected"]
        await wait_for(expected[0], args["deadline"])
        pipe.send(("counted", counts()))
        command, args = await _recv(pipe)
    assert command == "collect", command
    deadline = args["deadline"]
    expected[0] = args.get("expected", 0)
    if expected[0] and not stalled:
        await wait_for(expected[0], deadline)
    elif stalled:
        # Still open, or closed by the server? Read what was held back, for a few seconds.
        for client in clients:
            if client.transport is not None and not client.lost:
                client.transport.resume_reading()
        grace = time.monotonic() + args.get("drain_seconds", 3.0)
        while time.monotonic() < grace and not all(c.close_code or c.lost for c in clients):
            await asyncio.sleep(0.1)
    result = {
        **counts(),
        "failed": failed,
        "connect_seconds": connect_seconds,
        "per_client": [c.count for c in clients] if stalled else [],
        "latencies": latencies,
    }
    for client in clients:
        client.abort()
    return result


def subscriber_main(pipe: Any, spec: dict[str, Any]) -> None:
    """Process entry: open spec["count"] connections to spec["url"], report over `pipe`."""
    raise_fd_limit()
    try:
        result = asyncio.run(_subscribers(pipe, spec))
        pipe.send(("result", result))
    except Exception as error:  # reported, so the harness never waits on a dead worker
        pipe.send(("error", repr(error)))


# --- publisher ------------------------------------------------------------------------------


def publish_payload(room: str, seq: int, pad: str) -> bytes:
    data: dict[str, Any] = {"t": time.monotonic_ns(), "seq": seq}
    if pad:
        data["pad"] = pad
    return json.dumps(
        {"type": "publish", "room": room, "data": data}, separators=(",", ":")
    ).encode()


async def _publisher(pipe: Any, spec: dict[str, Any]) -> dict[str, Any]:
    changed = asyncio.Event()
    client = await connect(
        spec["url"], decode=False, on_message=lambda _client: changed.set(), timeout=30.0
    )
    pipe.send(("ready", {}))
    command, _ = await _recv(pipe)
    assert command == "go", command
    room = spec["room"]
    deadline = time.monotonic() + spec["max_seconds"]
    sent = 0
    first_ns = time.monotonic_ns()
    if spec["mode"] == "fanout":
        # As fast as the server takes it: at most `window` messages not yet echoed back.
        count, window = spec["count"], spec["window"]
        while client.count < count and time.monotonic() < deadline and not client.lost:
            while sent < count and sent - client.count < window:
                client.send_text(publish_payload(room, sent, ""))
                sent += 1
            changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), 1.0)
    else:
        # A fixed rate for a fixed time; `pad` random bytes (base64) make each frame bigger.
        interval = 1.0 / spec["rate"]
        total = int(spec["rate"] * spec["seconds"])
        start = time.monotonic()
        pad_bytes = spec.get("pad", 0)
        while sent < total and time.monotonic() < deadline and not client.lost:
            pad = base64.b64encode(os.urandom(pad_bytes * 3 // 4)).decode() if pad_bytes else ""
            client.send_text(publish_payload(room, sent, pad))
            sent += 1
            await asyncio.sleep(max(0.0, start + sent * interval - time.monotonic()))
        grace = time.monotonic() + 5.0
        while client.count < sent and time.monotonic() < grace and not client.lost:
            changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), 0.5)
    result = {
        "sent": sent,
        "echoes": client.count,
        "first_ns": first_ns,
        "last_ns": client.last_ns,
        "lost": client.lost,
        "close_code": client.close_code,
    }
    client.abort()
    return result


def publisher_main(pipe: Any, spec: dict[str, Any]) -> None:
    """Process entry: one connection that publishes when told "go", reports over `pipe`."""
    raise_fd_limit()
    try:
        pipe.send(("result", asyncio.run(_publisher(pipe, spec))))
    except Exception as error:
        pipe.send(("error", repr(error)))
