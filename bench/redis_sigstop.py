"""Measure a hung Redis (SIGSTOP) under traffic: readiness and messages, with two processes.

Run with a rendered project that uses Redis (its own venv has every dependency):

    PROJECT=/tmp/out/realtime-service
    $PROJECT/.venv/bin/python bench/redis_sigstop.py $PROJECT [--keys] [--stop 10]

Starts a Valkey (the project's tests/redis_server.py) and two `python -m <package>` processes
on loopback, a sender on the first and a listener on each; the sender publishes 20 messages a
second, one at a time, and on an error frame publishes the message again a second later, as
the README tells a client (with `--keys`, with the same `key`). Redis is stopped with SIGSTOP for `--stop`
seconds, then continued. Prints when each `/readyz` failed and recovered, and per listener the
messages lost, duplicated and delivered late (more than a second after first sent).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

# The template's helpers for a rendered project (package name, free port): standard library
# only, so the project's virtualenv, which runs this script, imports them too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from rendering import free_port, package_of  # noqa: E402


def status(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


def watch(port: int, changes: list[tuple[float, int]], stop: threading.Event) -> None:
    last = None
    while not stop.is_set():
        code = status(port)
        if code != last:
            changes.append((time.monotonic(), code))
            last = code
        time.sleep(0.05)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("project", type=Path)
    parser.add_argument("--keys", action="store_true", help="publish with keys")
    parser.add_argument("--stop", type=float, default=10.0, help="seconds of SIGSTOP")
    args = parser.parse_args()
    sys.path.insert(0, str(args.project))
    from tests.redis_server import RedisServer  # the project's own helper
    from websockets.asyncio.client import connect

    package = package_of(args.project)
    workdir = Path(tempfile.mkdtemp(prefix="sigstop-"))
    redis = RedisServer(workdir)
    redis.start()
    ports = [free_port(), free_port()]
    servers = []
    for port in ports:
        env = os.environ | {
            "SERVER_PORT": str(port),
            "REDIS_URL": redis.url,
            "HUB_RATE_PER_SECOND": "1000",
            "HUB_RATE_BURST": "1000",
        }
        log = (workdir / f"server-{port}.log").open("w")
        servers.append(
            subprocess.Popen(
                [args.project / ".venv/bin/python", "-m", package],
                cwd=workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    for port in ports:
        for _ in range(100):
            if status(port) == 200:
                break
            time.sleep(0.1)
    changes: list[list[tuple[float, int]]] = [[], []]
    stop_watching = threading.Event()
    watchers = [
        threading.Thread(target=watch, args=(port, into, stop_watching), daemon=True)
        for port, into in zip(ports, changes, strict=True)
    ]
    for watcher in watchers:
        watcher.start()

    first_sent: dict[int, float] = {}
    received: list[list[tuple[int, float]]] = [[], []]
    errors: Counter[str] = Counter()
    error_seconds: list[float] = []  # from a publish to its error frame
    async with (
        connect(f"ws://127.0.0.1:{ports[0]}/ws") as sender,
        connect(f"ws://127.0.0.1:{ports[0]}/ws") as on_a,
        connect(f"ws://127.0.0.1:{ports[1]}/ws") as on_b,
    ):
        for ws in (sender, on_a, on_b):
            await ws.recv()  # welcome
        replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def read_replies() -> None:
            while True:
                for line in str(await sender.recv()).split("\n"):
                    replies.put_nowait(json.loads(line))

        async def listen(ws: Any, into: list[tuple[int, float]]) -> None:
            while True:
                for line in str(await ws.recv()).split("\n"):
                    frame = json.loads(line)
                    if frame["type"] == "message":
                        into.append((frame["data"], time.monotonic()))
                    elif frame["type"] == "resync":
                        into.append((-1, time.monotonic()))

        async def publish_until_done(n: int) -> None:
            """Publish n; on an error, again a second later, until it is echoed (or, with
            keys, refused as already published). Echoes of earlier retries are skipped."""
            message: dict[str, Any] = {"type": "publish", "data": n}
            if args.keys:
                message["key"] = f"m{n}"
            first_sent[n] = time.monotonic()
            while True:
                await sender.send(json.dumps(message))
                sent_at = time.monotonic()
                while True:
                    reply = await replies.get()
                    if reply["type"] not in ("message", "error"):
                        continue  # a ping, a resync
                    if reply["type"] == "message" and reply["data"] != n:
                        continue  # a late echo of an earlier message
                    break
                if reply["type"] == "message" or reply.get("code") == "already_published":
                    if reply["type"] == "error":
                        errors[reply["code"]] += 1
                    return
                errors[reply["code"]] += 1
                error_seconds.append(time.monotonic() - sent_at)
                await asyncio.sleep(1.0)

        tasks = [
            asyncio.create_task(read_replies()),
            asyncio.create_task(listen(on_a, received[0])),
            asyncio.create_task(listen(on_b, received[1])),
        ]
        publishing = True

        async def traffic() -> None:
            n = 0
            while publishing:
                await publish_until_done(n)
                n += 1
                await asyncio.sleep(0.05)

        traffic_task = asyncio.create_task(traffic())
        await asyncio.sleep(3)
        redis.pause()
        stopped_at = time.monotonic()
        await asyncio.sleep(args.stop)
        redis.resume()
        continued_at = time.monotonic()
        await asyncio.sleep(10)
        publishing = False
        await traffic_task
        await asyncio.sleep(5)
        for task in tasks:
            task.cancel()
    stop_watching.set()
    for server in servers:
        server.terminate()
        server.wait()
    redis.kill()

    report: dict[str, Any] = {
        "sent": len(first_sent),
        "errors": dict(errors),
        "slowest_error_s": round(max(error_seconds, default=0.0), 2),
    }
    for name, into, seen in zip(("a", "b"), changes, received, strict=True):
        failed = next((t for t, code in into if code != 200 and t >= stopped_at), None)
        back = next((t for t, code in into if code == 200 and t >= continued_at), None)
        counts = Counter(n for n, _ in seen if n >= 0)
        first_received = {}
        for n, at in seen:
            first_received.setdefault(n, at)
        report[name] = {
            "readyz_failed_after_s": None if failed is None else round(failed - stopped_at, 2),
            "readyz_back_after_continue_s": None if back is None else round(back - continued_at, 2),
            "lost": len(set(first_sent) - set(counts)),
            "duplicated": sum(1 for count in counts.values() if count > 1),
            "late_over_1s": sum(
                1 for n, at in first_received.items() if n >= 0 and at - first_sent[n] > 1
            ),
            "resyncs": sum(1 for n, _ in seen if n < 0),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
