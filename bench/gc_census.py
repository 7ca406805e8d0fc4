"""Tracked objects per idle connection, and the collections a heartbeat tick starts, measured.

    cd RENDERED_PROJECT && .venv/bin/python /path/to/bench/gc_census.py N   # e.g. 10000
    PACED=1 .venv/bin/python .../gc_census.py N    # with the app's own GC pacer, freezing each 1 s

Run inside a project rendered with the default package name (realtime_service). Prints the
tracked objects per connection by type (a census of gc.get_objects() before and after N
connections), what the first ping and pong leave per connection, and, for three ticks by hand
(the ping offered to every connection, every pong read back), the collections by generation
with their wall and CPU time and what the young generations held at the first generation-1 one.
Not part of bench/run.py: a diagnostic for gc_pacing.py's figures.

The server runs in this process (uvicorn, the template's protocol, the app's settings); the
clients in a child process (websockets), answering pings with pongs. The pacer is off
(SERVER_GC_GROWTH_PERCENT=0) so that gc.get_objects() sees everything.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
from collections import Counter

PACED = os.environ.get("PACED")  # the app's own pacer, freezing every PACED seconds
if not PACED:
    os.environ["SERVER_GC_GROWTH_PERCENT"] = "0"
os.environ.setdefault("HEARTBEAT_INTERVAL_SECONDS", "100000")
os.environ.setdefault("HEARTBEAT_TIMEOUT_SECONDS", "100000")
os.environ.setdefault("HUB_MAX_CONNECTIONS", "100000")
os.environ.setdefault("CAPACITY_MAX_CONNECTIONS", "100000")

import uvicorn  # noqa: E402

from realtime_service.app import create_app  # noqa: E402
from realtime_service.settings import Settings  # noqa: E402
from realtime_service.ws_protocol import WebSocketProtocol  # noqa: E402

CLIENT = r"""
import asyncio, sys
from websockets.asyncio.client import connect
port, n = int(sys.argv[1]), int(sys.argv[2])
async def one(ready):
    async with connect(f"ws://127.0.0.1:{port}/ws", ping_interval=None, max_queue=None) as ws:
        await ws.recv()
        ready.append(1)
        async for frame in ws:
            if '"ping"' in frame:
                await ws.send('{"type":"pong"}')
async def main():
    ready = []
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(one(ready)))
        if i % 200 == 199:
            await asyncio.sleep(0.05)
    while len(ready) < n:
        await asyncio.sleep(0.1)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for t in tasks: t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
asyncio.run(main())
"""


def census() -> Counter[str]:
    gc.unfreeze()
    gc.collect()
    found = Counter(type(o).__module__ + "." + type(o).__qualname__ for o in gc.get_objects())
    if PACED:
        gc.freeze()
    return found


async def main(n: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    if PACED:
        from realtime_service import gc_pacing
        init = gc_pacing.GcPacer.__init__
        def patched(self, *a, **k):
            init(self, *a, **k)
            self.freeze_every = float(PACED)
        gc_pacing.GcPacer.__init__ = patched
    settings = Settings()
    app = create_app(settings)
    port = 18000 + os.getpid() % 1000
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ws=WebSocketProtocol,
        ws_per_message_deflate=False,
        ws_ping_interval=None,
        ws_ping_timeout=None,
        log_level="warning",
        backlog=4096,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    hub = app.state.hub

    async def clients(count: int) -> subprocess.Popen[str]:
        proc = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-c", CLIENT, str(port), str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = await asyncio.to_thread(proc.stdout.readline)  # type: ignore[union-attr]
        assert line.strip() == "ready", line
        return proc

    async def done(proc: subprocess.Popen[str]) -> None:
        proc.stdin.write("\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        await asyncio.to_thread(proc.wait)
        while len(hub):
            await asyncio.sleep(0.05)

    await done(await clients(200))  # warm-up: caches, lazily made objects
    await asyncio.sleep(0.5)
    before = census()
    proc = await clients(n)
    await asyncio.sleep(1)
    after = census()
    assert len(hub) == n, len(hub)
    diff = after - before
    total = sum(after.values()) - sum(before.values())
    print(f"connections {n}: {total / n:.1f} tracked objects per connection")
    for name, count in diff.most_common(30):
        if count >= n // 2:
            print(f"  {count / n:6.2f}  {name}")

    # One heartbeat tick by hand: the ping offered to every connection, pongs read back.
    pauses: list[tuple[int, float, float, tuple[int, int, int]]] = []
    started: list = [0.0, 0.0, None]
    young: list[Counter[str]] = []
    big: list[tuple[int, str]] = []

    def hook(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            if info["generation"] == 1 and not young:
                objs = gc.get_objects(0) + gc.get_objects(1)
                young.append(Counter(type(o).__module__ + "." + type(o).__qualname__ for o in objs))
                for o in objs:
                    try:
                        size = len(o)
                    except Exception:
                        continue
                    if size > 500:
                        big.append((size, type(o).__qualname__ + " " + repr(o)[:80]))
            started[:] = [time.perf_counter(), time.thread_time(), gc.get_count()]
        else:
            pauses.append(
                (
                    info["generation"],
                    (time.perf_counter() - started[0]) * 1e3,
                    (time.thread_time() - started[1]) * 1e3,
                    started[2],
                )
            )

    from realtime_service.protocol import encode

    ping = encode({"type": "ping"})
    loop = asyncio.get_running_loop()
    c0 = census()
    now = loop.time()
    for connection in hub:
        connection.offer(ping)
    for _ in range(300):
        if all(c.last_seen > now for c in hub):
            break
        await asyncio.sleep(0.1)
    c1 = census()
    print("after the first tick, per connection:", [(k, v / n) for k, v in (c1 - c0).most_common(10)])
    print("gone:", [(k, v / n) for k, v in (c0 - c1).most_common(5)])
    for label in ("paced",) * 3 if PACED else ("frozen", "unfrozen", "frozen"):
        if not PACED:
            gc.collect()
        if label == "frozen":
            gc.freeze()
        stats0 = [s["collections"] for s in gc.get_stats()]
        gc.callbacks.append(hook)
        pauses.clear()
        young.clear()
        big.clear()
        peak = [0]
        async def sample() -> None:
            while True:
                peak[0] = max(peak[0], gc.get_count()[0])
                await asyncio.sleep(0)
        sampler = asyncio.create_task(sample())
        t0 = time.perf_counter()
        now = loop.time()
        for connection in hub:
            connection.offer(ping)
        t1 = time.perf_counter()
        for _ in range(300):
            if all(c.last_seen > now for c in hub):
                break
            await asyncio.sleep(0.1)
        t2 = time.perf_counter()
        sampler.cancel()
        print("   peak young count", peak[0], "threshold", gc.get_threshold())
        gc.callbacks.remove(hook)
        stats1 = [s["collections"] for s in gc.get_stats()]
        gens = [b - a for a, b in zip(stats0, stats1)]
        print(
            f"tick ({label}): offers {1e3 * (t1 - t0):.0f} ms, all pongs in {t2 - t0:.1f} s; "
            f"collections by generation {gens}, "
            f"max wall {max((p[1] for p in pauses), default=0):.2f} ms, "
            f"max cpu {max((p[2] for p in pauses), default=0):.2f} ms, "
            f"sum cpu {sum(p[2] for p in pauses):.1f} ms"
        )
        for gen in (0, 1, 2):
            mine = [p for p in pauses if p[0] == gen]
            if mine:
                worst = max(mine, key=lambda p: p[2])
                print(
                    f"   gen{gen}: {len(mine)} max wall {max(p[1] for p in mine):.2f} "
                    f"max cpu {worst[2]:.2f} ms (counts at its start {worst[3]})"
                )
        if young:
            print("   young objects at the first gen1:", young[0].most_common(12))
            print("   big young containers:", sorted(big, reverse=True)[:8])
        if not PACED:
            gc.unfreeze()
    gc.unfreeze()
    gc.collect()
    t = time.perf_counter()
    gc.collect()
    print(f"full collection at {n}: {1e3 * (time.perf_counter() - t):.0f} ms, "
          f"{len(gc.get_objects())} objects")
    await done(proc)
    server.should_exit = True
    await serving


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
