"""The benchmark: the generated service against the textbook manager and raw `websockets`.

    python bench/run.py [--quick] [--runs 5] [--only F,L,S] [--out build/bench]
    python bench/run.py --compare REV [--only F,L,S]      # the template at REV against the tree
    python bench/run.py --project old=PATH --project new=PATH    # two templates or projects

Renders the template with every feature on: its default answers (rooms, SSE, heartbeats) with
`auth=query_token` (and, when the template has a `use_redis` question, a Redis variant), installs
it into its own virtualenv, and for each run and each server starts a fresh server process per
workload and drives it from separate client processes on loopback:

F  fanout: N subscribers in one room (N = 100 and 1,000), one publisher as fast as the server
   echoes allow (a window of outstanding messages): deliveries/s, server CPU per delivery.
L  latency: 1,000 subscribers x 10 messages/s: p50 and p99 publish-to-receive.
S  isolation: L with some clients that stop reading: the others' p99, the stalled ones' fate.
I  idle: server memory per open connection at 2,000 and 10,000 connections.
R  Redis: F through the Redis broker, and two server processes sharing a room; RL: L through
   Redis on one server (only when the template has `use_redis`).
E  SSE: F, L and I with `GET /sse` subscribers (E100, E1000, EL, EI) and one WebSocket
   publisher, for the service and two SSE baselines (sse-starlette, fastapi.sse).

Not in the default run (minutes each), only with --only:
C  scale: one server holding idle WebSocket connections at 2,000, 10,000 and the most its open
   file limit allows (about 19,000 at a hard limit of 20,000), heartbeats every 5 s, the
   clients answering them from 127.0.0.2 and up: memory per connection, the time from one
   publish to its last delivery and the server CPU it took at each level, and how many were
   closed after several heartbeat intervals held. The service and raw `websockets`.
G  GC tail: L at 10,000 subscribers x 1 message/s for 10 minutes (--gc-seconds): p50, p99,
   p99.9 and the maximum, and every garbage collection pause the service logs (SERVER_GC_LOG).
   The service only.

--uvloop also measures the service under uvloop and httptools (SERVER_LOOP=uvloop,
SERVER_HTTP=httptools, both installed into its virtualenv for the run) as "service-uvloop",
beside the service pinned to asyncio and h11 (and the uvicorn baselines with them too).

The service gets a signing secret made for this invocation (AUTH_SECRET) and its clients a token
the project's own `token` command signs with it, in `/ws?token=...`; the baselines take no token.
Server CPU is user + system time of the server process itself (psutil). Every figure is a median
over the runs, with its spread, and a ratio to the baselines measured in the same run. Writes
results.json, results.md and results.png into --out.

With two projects (--compare REV: the template committed at REV, extracted with `git archive`,
as "old" and the working tree as "new"), both are rendered with the same answers (and Redis
variants for R), each in its own virtualenv, and every workload measures old then new (new then
old in the next run) instead of the baselines: the table shows both, the same-run ratio new/old
and whether new is worse, better or within the run-to-run spread.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import math
import multiprocessing
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(BENCH))

import clients  # noqa: E402
import rendering  # noqa: E402
import report  # noqa: E402

HOST = "127.0.0.1"
ROOM = "bench"
# The answers the service is measured with: every feature on. The template's defaults turn on
# rooms, SSE and heartbeats; authentication is off by default, so it is asked for here.
ANSWERS: dict[str, object] = {**rendering.DEFAULT.answers, "auth": "query_token"}
# The one token every bench client connects with outlives any invocation (a 5-run bench takes
# about 20 minutes); its secret is made per invocation and dies with it.
TOKEN_TTL_SECONDS = 7 * 24 * 3600
# Idle connections cost a client process little; busy ones are spread wider, so client-side
# queueing stays small next to what is measured.
IDLE_PER_PROCESS = 2500
BUSY_PER_PROCESS = 500


@dataclass
class Config:
    runs: int
    fanout_sizes: tuple[int, ...] = (100, 1000)
    fanout_deliveries: int = 200_000  # per fanout run: count = deliveries / N
    window: int = 16
    latency_subscribers: int = 1000
    latency_rate: float = 10.0
    latency_seconds: float = 10.0
    isolation_seconds: float = 20.0
    stalled: int = 10
    # S-fill: enough bytes that a stalled client's socket buffers (up to 4 MB each way on
    # Linux loopback) and then its queue fill within the run, to see what becomes of it.
    fill_subscribers: int = 100
    fill_stalled: int = 10
    fill_rate: float = 50.0
    fill_seconds: float = 10.0
    fill_pad: int = 16384
    payload_pad: int = 1024  # bytes of random base64 per L/S message, so stalls fill buffers
    idle_levels: tuple[int, ...] = (2000, 10000)
    # C: 0 stands for the most the server's open file limit allows.
    scale_levels: tuple[int, ...] = (2000, 10000, 0)
    scale_broadcasts: int = 3  # per level, one at a time: the median is reported
    scale_hold_seconds: float = 20.0  # at the top level: four heartbeat intervals
    heartbeat_seconds: float = 5.0  # C's HEARTBEAT_INTERVAL_SECONDS and _TIMEOUT_SECONDS
    gc_subscribers: int = 10000
    gc_rate: float = 1.0
    gc_seconds: float = 600.0
    outbox_limit_fanout: int = 1024
    outbox_limit_latency: int = 64
    max_seconds: float = 60.0


QUICK = dict(
    runs=1,
    fanout_sizes=(20,),
    fanout_deliveries=20 * 50,
    latency_subscribers=20,
    latency_seconds=1.0,
    isolation_seconds=1.5,
    stalled=2,
    fill_subscribers=10,
    fill_stalled=2,
    fill_rate=20.0,
    fill_seconds=1.0,
    fill_pad=1024,
    idle_levels=(50, 100),
    scale_levels=(100, 300),
    scale_broadcasts=2,
    scale_hold_seconds=2.5,
    heartbeat_seconds=0.5,
    gc_subscribers=200,
    gc_rate=5.0,
    gc_seconds=3.0,
    max_seconds=20.0,
)


# --- servers ---------------------------------------------------------------------------------


@dataclass
class Target:
    """How to start one kind of server on a given port."""

    name: str
    argv: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    # Extra env per workload kind ("fanout" or "latency"); the service's outbox limit.
    env_for: dict[str, dict[str, str]] = field(default_factory=dict)
    # Extra query parameters of every connection URL, after `room`: the service's `token`.
    query: dict[str, str] = field(default_factory=dict)
    # How its subscribers may connect: "ws" and, for SSE servers, "sse".
    transports: tuple[str, ...] = ("ws",)
    # A generated project's: its folder and the answers it was rendered with.
    project: Path | None = None
    answers: dict[str, object] = field(default_factory=dict)

    @property
    def uses_redis(self) -> bool:
        """Rendered with use_redis: its servers need REDIS_URL, whatever the workload."""
        return self.answers.get("use_redis") is True


def server_env(target: Target, kind: str) -> dict[str, str]:
    """The environment a target's process runs with (its server, or a command of its project)."""
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    env.update(target.env)
    env.update(target.env_for.get(kind, {}))
    return env


class Server:
    def __init__(
        self, target: Target, logs: Path, kind: str, extra_env: dict[str, str] | None = None
    ):
        self.target = target
        self.port = rendering.free_port()
        argv = [
            arg.replace("{port}", str(self.port)).replace("{host}", HOST) for arg in target.argv
        ]
        env = server_env(target, kind)
        env.update(extra_env or {})
        env.update({"SERVER_HOST": HOST, "SERVER_PORT": str(self.port)})
        logs.mkdir(parents=True, exist_ok=True)
        self.log = open(logs / f"{target.name}-{kind}-{self.port}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            argv,
            cwd=target.cwd,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=clients.raise_fd_limit,
        )
        self.ps = psutil.Process(self.process.pid)
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{target.name} exited {self.process.returncode}; see {self.log.name}"
                )
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.5):
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{target.name} did not listen on {self.port} in 60 s")
            time.sleep(0.1)

    def url(self, transport: str = "ws") -> str:
        """A subscriber's URL: a WebSocket (ws), or a Server-Sent Events stream (sse)."""
        scheme, path = {"ws": ("ws", "/ws"), "sse": ("http", "/sse")}[transport]
        return (
            f"{scheme}://{HOST}:{self.port}{path}?{urlencode({'room': ROOM, **self.target.query})}"
        )

    def cpu(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def event_loop(self) -> str:
        """The event loop it runs: uvloop if its extension is mapped into the process."""
        with contextlib.suppress(psutil.Error):
            if any("/site-packages/uvloop/" in m.path for m in self.ps.memory_maps()):
                return "uvloop"
        return "asyncio"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.close()


# --- client processes ------------------------------------------------------------------------

_MP = multiprocessing.get_context("spawn")


class Worker:
    def __init__(self, main: Any, spec: dict[str, Any]):
        self.pipe, child = _MP.Pipe()
        self.process = _MP.Process(target=main, args=(child, spec), daemon=True)
        self.process.start()

    def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        if not self.pipe.poll(timeout):
            raise TimeoutError(f"client worker sent nothing in {timeout:.0f} s")
        got, payload = self.pipe.recv()
        if got != kind:
            raise RuntimeError(f"client worker: expected {kind!r}, got {got!r}: {payload}")
        return payload

    def send(self, command: str, **args: Any) -> None:
        self.pipe.send((command, args))

    def close(self) -> None:
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


def subscribers(
    urls: list[str],
    count: int,
    *,
    timeout: float,
    per_process: int = BUSY_PER_PROCESS,
    sources: list[str] | None = None,
    **spec: Any,
) -> list[Worker]:
    """Spread `count` connections over processes (and over `urls`, round robin); wait ready.
    With `sources`, each process connects from its own local address (round robin)."""
    procs = max(len(urls), math.ceil(count / per_process))
    sizes = [count // procs + (1 if i < count % procs else 0) for i in range(procs)]
    workers = [
        Worker(
            clients.subscriber_main,
            {
                "url": urls[i % len(urls)],
                "count": size,
                **({"source": sources[i % len(sources)]} if sources else {}),
                **spec,
            },
        )
        for i, size in enumerate(sizes)
        if size
    ]
    for worker in workers:
        ready = worker.expect("ready", timeout)
        if ready["failed"]:
            raise RuntimeError(f"{ready['failed']} of {count} subscribers could not connect")
    return workers


def collect(workers: list[Worker], timeout: float, **args: Any) -> list[dict[str, Any]]:
    for worker in workers:
        worker.send("collect", **args)
    results = [worker.expect("result", timeout) for worker in workers]
    for worker in workers:
        worker.close()
    return results


def publisher(url: str, **spec: Any) -> Worker:
    worker = Worker(clients.publisher_main, {"url": url, "room": ROOM, **spec})
    worker.expect("ready", 60)
    return worker


# --- workloads -------------------------------------------------------------------------------


def fanout(
    servers: list[Server], config: Config, *, n: int, transport: str = "ws"
) -> dict[str, Any]:
    """F: n subscribers (spread over `servers`), one publisher on the first, max rate."""
    count = max(1, config.fanout_deliveries // n)
    urls = [s.url(transport) for s in servers]
    subs = subscribers(urls, n, timeout=config.max_seconds, decode=False)
    pub = publisher(
        servers[0].url(),
        mode="fanout",
        count=count,
        window=config.window,
        max_seconds=config.max_seconds,
    )
    cpu0 = sum(s.cpu() for s in servers)
    pub.send("go")
    published = pub.expect("result", config.max_seconds + 30)
    pub.close()
    results = collect(subs, 60, expected=published["sent"], deadline=time.monotonic() + 10)
    cpu = sum(s.cpu() for s in servers) - cpu0
    received = sum(r["received"] for r in results)
    deliveries = received + published["echoes"]
    last_ns = max([published["last_ns"], *(r["last_ns"] for r in results)])
    wall = max(1e-9, (last_ns - published["first_ns"]) / 1e9)
    return {
        "subscribers": n,
        "sent": published["sent"],
        "deliveries": deliveries,
        "expected": published["sent"] * (n + 1),
        "deliveries_per_s": deliveries / wall,
        "cpu_us_per_delivery": cpu / max(1, deliveries) * 1e6,
        "wall_s": wall,
        "subscribers_closed": sum(r["closed_by_server"] + r["lost"] for r in results),
    }


def latency(
    servers: list[Server],
    config: Config,
    *,
    stalled: int,
    seconds: float,
    total: int | None = None,
    rate: float | None = None,
    pad: int | None = None,
    transport: str = "ws",
    pong: bool = False,
    before_go: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """L (stalled=0) or S: subscribers at a fixed rate; p50/p99 of the healthy ones. `pong`:
    they answer the service's heartbeat pings (a run longer than its timeout needs it)."""
    (server,) = servers
    total = config.latency_subscribers if total is None else total
    healthy = total - stalled
    subs = subscribers(
        [server.url(transport)],
        healthy,
        timeout=config.max_seconds * max(1, math.ceil(healthy / 2000)),
        decode=True,
        **({"pong": True} if pong else {}),
    )
    stuck = (
        subscribers([server.url()], stalled, timeout=config.max_seconds, stalled=True, rcvbuf=4096)
        if stalled
        else []
    )
    pub = publisher(
        server.url(),
        mode="rate",
        rate=rate or config.latency_rate,
        seconds=seconds,
        pad=config.payload_pad if pad is None else pad,
        max_seconds=seconds + 30,
    )
    if before_go is not None:
        before_go()
    cpu0, rss0 = server.cpu(), server.rss()
    pub.send("go")
    published = pub.expect("result", seconds + 60)
    pub.close()
    results = collect(subs, 60, expected=published["sent"], deadline=time.monotonic() + 5)
    rss1 = server.rss()
    stuck_results = (
        collect(stuck, 60, deadline=time.monotonic(), drain_seconds=3.0) if stuck else []
    )
    cpu = server.cpu() - cpu0
    values = sorted(v for r in results for v in r["latencies"])
    received = sum(r["received"] for r in results)
    metrics: dict[str, Any] = {
        "subscribers": total,
        "sent": published["sent"],
        "received": received,
        "expected": published["sent"] * healthy,
        "p50_ms": _percentile(values, 50) / 1e6,
        "p99_ms": _percentile(values, 99) / 1e6,
        "p999_ms": _percentile(values, 99.9) / 1e6,
        "max_ms": (values[-1] / 1e6) if values else float("nan"),
        "cpu_s": cpu,
        # Nothing is batched at this rate: each message is one write per client.
        "cpu_us_per_delivery": cpu / max(1, received) * 1e6,
        "healthy_closed": sum(r["closed_by_server"] + r["lost"] for r in results),
        "server_rss_growth_mb": (rss1 - rss0) / 2**20,
    }
    if stuck:
        per_client = [c for r in stuck_results for c in r["per_client"]]
        codes: dict[str, int] = {}
        for r in stuck_results:
            for code, number in r["close_codes"].items():
                codes[code] = codes.get(code, 0) + number
        metrics.update(
            stalled=stalled,
            stalled_closed=sum(r["closed_by_server"] + r["lost"] for r in stuck_results),
            stalled_received_min=min(per_client, default=0),
            stalled_close_codes=codes,
            stalled_received_median=statistics.median(per_client) if per_client else 0,
            healthy_delivered_pct=100.0 * received / max(1, published["sent"] * healthy),
        )
    return metrics


def idle(servers: list[Server], config: Config, *, transport: str = "ws") -> dict[str, Any]:
    """I: server RSS growth per open connection at each level (connections kept open)."""
    (server,) = servers
    warm = subscribers(
        [server.url(transport)], 1, timeout=60, per_process=IDLE_PER_PROCESS
    )  # imports and first-use allocations
    time.sleep(0.5)
    rss0 = server.rss()
    workers = list(warm)
    opened = 1
    metrics: dict[str, Any] = {}
    try:
        for level in config.idle_levels:
            workers += subscribers(
                [server.url(transport)],
                level - opened,
                timeout=config.max_seconds * 3,
                per_process=IDLE_PER_PROCESS,
            )
            opened = level
            time.sleep(1.0)
            metrics[f"kb_per_conn_{level}"] = (server.rss() - rss0) / (level - 1) / 1024
    finally:
        collect(workers, 60, deadline=time.monotonic())
    return metrics


# C's clients connect from these loopback addresses, one per client process (round robin): each
# has its own ephemeral ports, so no one address runs out of them.
SOURCES = [f"127.0.0.{i}" for i in range(2, 21)]
# File descriptors of a server process that are not connections: the service keeps
# min(1,024, 10% of its limit) for itself (SERVER_MAX_CONNECTIONS' default), and the top level
# leaves room for the warm-up connection and each broadcast's publisher.
SCALE_RESERVED_FDS = 1100


def scale_levels(config: Config) -> list[int]:
    """C's connection counts, 0 (the most) made the servers' hard open-file limit less reserve."""
    most = resource.getrlimit(resource.RLIMIT_NOFILE)[1] - SCALE_RESERVED_FDS
    return sorted({level or most for level in config.scale_levels})


def _count_all(
    workers: list[Worker], expected: int, seconds: float, reset: bool = False
) -> list[dict[str, Any]]:
    """Each subscriber process waits until its connections have `expected` messages each (or
    `seconds`) and reports its counts; the connections stay open. `reset`: count from zero."""
    deadline = time.monotonic() + seconds
    for worker in workers:
        worker.send("count", expected=expected, deadline=deadline, reset=reset)
    return [worker.expect("counted", seconds + 60) for worker in workers]


def scale(servers: list[Server], config: Config) -> dict[str, Any]:
    """C: idle connections with heartbeats at growing levels; memory, one broadcast to all and
    its CPU at each; then a hold of several heartbeat intervals, and how many were closed."""
    (server,) = servers
    url = server.url()
    spec = {"per_process": IDLE_PER_PROCESS, "pong": True, "connect_timeout": 60.0}
    next_source = 0

    def open_more(count: int) -> list[Worker]:
        nonlocal next_source
        procs = math.ceil(count / IDLE_PER_PROCESS)
        sources = [SOURCES[(next_source + i) % len(SOURCES)] for i in range(procs)]
        next_source += procs
        # Connecting is the slow part (about 1 ms each on this machine, handshake and token).
        return subscribers([url], count, timeout=60 + count / 100, sources=sources, **spec)

    workers = open_more(1)  # imports and first-use allocations
    time.sleep(0.5)
    rss0 = server.rss()
    opened, published = 1, 0
    metrics: dict[str, Any] = {"heartbeat_s": config.heartbeat_seconds}
    try:
        for level in scale_levels(config):
            workers += open_more(level - opened)
            opened = level
            time.sleep(1.0)
            metrics[f"kb_per_conn_{level}"] = (server.rss() - rss0) / (level - 1) / 1024
            _count_all(workers, 0, 0, reset=True)  # the new connections missed the earlier ones
            published = 0
            times, cpus, delivered = [], [], []
            for _ in range(config.scale_broadcasts):
                pub = publisher(url, mode="fanout", count=1, window=1, max_seconds=30)
                cpu0 = server.cpu()
                pub.send("go")
                sent = pub.expect("result", 60)
                pub.close()
                published += sent["sent"]
                counts = _count_all(workers, published, 30)
                cpus.append(server.cpu() - cpu0)
                last_ns = max(c["last_ns"] for c in counts)
                times.append((last_ns - sent["first_ns"]) / 1e6)
                delivered.append(
                    sum(c["received"] for c in counts) / max(1, published * opened) * 100
                )
            metrics[f"broadcast_ms_{level}"] = statistics.median(times)
            metrics[f"broadcast_cpu_ms_{level}"] = statistics.median(cpus) * 1e3
            metrics[f"broadcast_cpu_us_per_delivery_{level}"] = (
                statistics.median(cpus) / level * 1e6
            )
            metrics[f"delivered_pct_{level}"] = min(delivered)
        # The hold: several heartbeat intervals; a client that did not answer would be closed
        # after one interval plus the timeout (the raw server's keepalive, the same).
        time.sleep(config.scale_hold_seconds)
        counts = _count_all(workers, published, 10)
        metrics.update(
            connections=sum(c["connected"] for c in counts),
            held_s=config.scale_hold_seconds,
            closed=sum(c["closed_by_server"] + c["lost"] for c in counts),
            pings_per_conn=sum(c["pings"] for c in counts) / max(1, opened),
            rss_mb=server.rss() / 2**20,
            kb_per_conn_held=(server.rss() - rss0) / (opened - 1) / 1024,
        )
    finally:
        collect(workers, 60, deadline=time.monotonic())
    return metrics


GC_PAUSE = re.compile(r"gc pause: generation=(\d) collected=(\d+) pause_ms=([\d.]+)")


def gc_tail(servers: list[Server], config: Config) -> dict[str, Any]:
    """G: a long L at many subscribers x a slow rate; the tail, and every GC pause the server
    logged (SERVER_GC_LOG) while the publisher ran."""
    (server,) = servers
    log = Path(server.log.name)
    offset = [0]

    def mark() -> None:
        offset[0] = log.stat().st_size

    metrics = latency(
        servers,
        config,
        stalled=0,
        seconds=config.gc_seconds,
        total=config.gc_subscribers,
        rate=config.gc_rate,
        pong=True,
        before_go=mark,
    )
    with open(log, "rb") as file:
        file.seek(offset[0])
        text = file.read().decode(errors="replace")
    pauses = [(int(g), int(c), float(ms)) for g, c, ms in GC_PAUSE.findall(text)]
    # Those of the server's whole life (connecting included): that the log works at all.
    metrics["gc_pauses_logged"] = len(GC_PAUSE.findall(log.read_text(errors="replace")))
    metrics["p999_over_p99"] = metrics["p999_ms"] / metrics["p99_ms"]
    metrics["gc_pauses"] = len(pauses)
    metrics["gc_max_pause_ms"] = max((ms for _, _, ms in pauses), default=0.0)
    for generation in (0, 1, 2):
        mine = [ms for g, _, ms in pauses if g == generation]
        metrics[f"gc{generation}_count"] = len(mine)
        metrics[f"gc{generation}_max_ms"] = max(mine, default=0.0)
    metrics["gc_pauses_over_20ms"] = [[g, c, ms] for g, c, ms in pauses if ms > 20]
    metrics["gc_pause_log"] = [[g, c, ms] for g, c, ms in pauses]
    return metrics


def _percentile(values: list[int], pct: float) -> float:
    if not values:
        return float("nan")
    index = min(len(values) - 1, max(0, math.ceil(pct / 100 * len(values)) - 1))
    return float(values[index])


# --- preparation -----------------------------------------------------------------------------


def prepare_project(
    out: Path, label: str, answers: dict[str, object], template: Path = ROOT
) -> Path:
    """Render and install the template (the working tree, or a copy of another revision) with
    those of `answers` it asks about; return the project's folder."""
    parent = out / "projects" / label
    shutil.rmtree(parent, ignore_errors=True)
    parent.mkdir(parents=True)
    asked = template_questions(template)
    project = rendering.render_cookiecutter(
        {k: v for k, v in answers.items() if k in asked}, parent, template
    )
    rendering.install(project)
    return project


def project_parts(project: Path) -> tuple[Path, Path]:
    """(virtualenv python, package folder) of a rendered and installed project."""
    python = project / ".venv" / "bin" / "python"
    return python, project / "src" / rendering.package_of(project)


def project_answers(package_dir: Path) -> dict[str, object]:
    """The feature answers a project was rendered with, read from the modules generation kept
    (hooks/post_gen_project.py deletes those of the features not chosen), so that a project
    given with --project is described, and connected to, as it really is."""

    def has(module: str) -> bool:
        return (package_dir / f"{module}.py").is_file()

    auth = "query_token" if has("auth_token") else "cookie" if has("auth_cookie") else "none"
    return {
        "use_rooms": has("rooms"),
        "use_redis": has("redis_broker"),
        "use_sse": has("sse"),
        "use_heartbeats": has("heartbeat"),
        "auth": auth,
    }


def mint_token(target: Target, package: str) -> str:
    """A token from the project's own `token` command, in the server's environment (so signed
    with its AUTH_SECRET, and with its issuer and audience if the environment sets them)."""
    result = subprocess.run(
        [target.argv[0], "-m", package, "token", "bench", "--ttl", str(TOKEN_TTL_SECONDS)],
        cwd=target.cwd,
        env=server_env(target, "token"),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    token = result.stdout.strip()
    if result.returncode != 0 or token.count(".") != 2:
        raise RuntimeError(
            f"{target.name}: `python -m {package} token` exited {result.returncode}: "
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return token


def service_target(name: str, project: Path, config: Config, secret: str) -> Target:
    """The project's own server. With query-token auth, it gets `secret` as AUTH_SECRET and
    every connection URL a token signed with it. Its Origin is not checked (only cookie auth
    has an Origin allowlist), so the clients, which send no Origin header, need nothing more."""
    python, package_dir = project_parts(project)
    package = package_dir.name
    target = Target(
        name=name,
        argv=[str(python), "-m", package, "serve"],
        cwd=BENCH,
        env={
            "SERVER_LOG_LEVEL": "warning",
            # The publisher sends as fast as allowed: the rate limit must not be the bottleneck.
            "HUB_RATE_PER_SECOND": "1000000",
            "HUB_RATE_BURST": "1000000",
        },
        env_for={
            "fanout": {"HUB_OUTBOX_LIMIT": str(config.outbox_limit_fanout)},
            "latency": {"HUB_OUTBOX_LIMIT": str(config.outbox_limit_latency)},
        },
        project=project,
        answers=project_answers(package_dir),
    )
    if target.answers["use_sse"]:
        target.transports = ("ws", "sse")
    auth = target.answers["auth"]
    if auth == "query_token":
        target.env["AUTH_SECRET"] = secret
        target.query["token"] = mint_token(target, package)
    elif auth != "none":
        raise SystemExit(
            f"{name}: auth={auth} is not supported: the bench clients carry a query token, "
            "never a session cookie"
        )
    return target


def textbook_target(name: str, python: Path, *options: str) -> Target:
    """bench/servers/textbook.py under uvicorn, with its defaults unless `options` say otherwise."""
    argv = [str(python), "-m", "uvicorn", "textbook:app", "--host", "{host}", "--port", "{port}"]
    return Target(name, [*argv, "--log-level", "warning", *options], BENCH / "servers")


def versions(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, platform;"
        "print(json.dumps({'python': platform.python_version(), **{p: m.version(p) for p in "
        "('fastapi', 'starlette', 'uvicorn', 'websockets', 'pydantic')}}))"
    )
    return json.loads(
        subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout
    )


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "load_at_start": os.getloadavg()[0],
    }


# The loop and HTTP parser each run of --uvloop pins, through the service's settings and the
# uvicorn command line of the baselines: with uvloop installed, uvicorn's "auto" would take it.
ASYNCIO = {"SERVER_LOOP": "asyncio", "SERVER_HTTP": "h11"}
UVLOOP = {"SERVER_LOOP": "uvloop", "SERVER_HTTP": "httptools"}


def uvloop_variant(service: Target, others: list[Target]) -> Target:
    """--uvloop: install uvloop and httptools into the service's virtualenv, pin the service and
    the uvicorn baselines to asyncio and h11, and return the service under uvloop and httptools."""
    assert service.project is not None
    settings = project_parts(service.project)[1] / "settings.py"
    if "loop: Literal" not in settings.read_text():
        raise SystemExit(f"--uvloop: {service.project} has no SERVER_LOOP setting")
    packages = ["uvloop", "httptools"]
    install = [rendering.uv_executable(), "pip", "install", "--python", service.argv[0], *packages]
    subprocess.run(install, env=rendering.uv_environment(), capture_output=True, check=True)
    service.env.update(ASYNCIO)
    for other in others:
        if "uvicorn" in other.argv:
            other.argv += ["--loop", "asyncio", "--http", "h11"]
        else:  # raw websockets, which takes uvloop when it can import it, as the others do
            other.env["SERVER_LOOP"] = "asyncio"
    return Target(
        f"{service.name}-uvloop",
        list(service.argv),
        service.cwd,
        env={**service.env, **UVLOOP},
        env_for=service.env_for,
        query=service.query,
        transports=service.transports,
        project=service.project,
        answers=service.answers,
    )


def choose_targets(
    names: str | None, services: list[Target], others: list[Target], compare: bool
) -> list[Target]:
    """The servers --targets names; by default the service and the two baselines, or, with two
    projects, just those two."""
    chosen = (
        names.split(",")
        if names
        else [s.name for s in services]
        if compare
        else [
            "service",
            "textbook",
            "raw",
            "sse-starlette",
            "fastapi-sse",
            *(s.name for s in services if s.name.endswith("-uvloop")),
        ]
    )
    available = [*services, *others]
    unknown = set(chosen) - {t.name for t in available}
    if unknown:
        raise SystemExit(f"--targets: unknown {', '.join(sorted(unknown))}")
    return [t for t in available if t.name in chosen]


def run_all(
    config: Config,
    selected: list[Workload],
    targets: list[Target],
    variants: list[Target],
    logs: Path,
) -> list[dict[str, Any]]:
    """Every run: each workload measures every target in turn (its Redis variants for R), so
    that machine noise hits them alike; the order flips from run to run, so none always goes
    first."""
    rows: list[dict[str, Any]] = []
    for run in range(1, config.runs + 1):
        order = 1 if run % 2 else -1
        for workload in selected:
            pool = variants if workload.redis else targets
            for target in [t for t in pool if workload.runs_on(t)][::order]:
                metrics = measure(target, workload, config, logs)
                rows.append(
                    {"run": run, "target": target.name, "workload": workload.name, **metrics}
                )
                shown = {
                    k: (round(v, 2) if isinstance(v, float) else v) for k, v in metrics.items()
                }
                print(f"run {run} {target.name:13} {workload.name:6} {shown}", flush=True)
    return rows


# --- main ------------------------------------------------------------------------------------


def template_questions(template: Path) -> dict[str, object]:
    """The questions a copy of the template asks (another revision may ask fewer)."""
    questions: dict[str, object] = json.loads(
        (template / "cookiecutter.json").read_text(encoding="utf-8")
    )
    return questions


# --- workloads: a table, one loop ------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One measurement of a run: the --only letter that selects it, the name its rows carry,
    the servers it starts for each target (how many, in which environment), what it measures."""

    letter: str
    name: str
    kind: str  # the servers' environment: "fanout" or "latency" (each its outbox limit), "idle"
    measure: Callable[[list[Server], Config], dict[str, Any]]
    servers: int = 1
    # Measured on the Redis variants (the projects rendered with use_redis), not the targets.
    redis: bool = False
    # How the subscribers connect: WebSocket, or SSE (the publisher always uses a WebSocket).
    transport: str = "ws"
    # In a run without --only; the long ones (C, G) are not.
    default: bool = True
    # Which baselines it measures beside the projects (None: all that have its transport).
    baselines: tuple[str, ...] | None = None
    # Environment of its servers, every target's (the raw baseline reads the heartbeat ones).
    env: tuple[tuple[str, str], ...] = ()

    def runs_on(self, target: Target) -> bool:
        if self.transport not in target.transports:
            return False
        return self.baselines is None or target.project is not None or target.name in self.baselines


# --only takes these letters, each selecting all its workloads (F: one per fanout size), or
# workload names (F100, RL, S-fill...) for just one.
LETTERS = ("F", "L", "S", "X", "I", "R", "E", "C", "G")


def workloads(config: Config) -> list[Workload]:
    """Every workload, in the order a run measures them."""
    steady = functools.partial(latency, stalled=0, seconds=config.latency_seconds)
    table = [
        Workload("F", f"F{n}", "fanout", functools.partial(fanout, n=n))
        for n in config.fanout_sizes
    ]
    table += [
        Workload("L", "L", "latency", steady),
        Workload(
            "S",
            "S",
            "latency",
            functools.partial(latency, stalled=config.stalled, seconds=config.isolation_seconds),
        ),
        Workload(
            "X",
            "S-fill",
            "latency",
            functools.partial(
                latency,
                stalled=config.fill_stalled,
                seconds=config.fill_seconds,
                total=config.fill_subscribers,
                rate=config.fill_rate,
                pad=config.fill_pad,
            ),
        ),
        Workload("I", "I", "idle", idle),
    ]
    # R: F through the Redis broker, with one server and two servers sharing the room; RL: L on
    # one server through Redis, what the round trip adds to the in-memory p99.
    table += [
        Workload("R", f"R{n}x{count}", "fanout", functools.partial(fanout, n=n), count, True)
        for n in config.fanout_sizes
        for count in (1, 2)
    ]
    table.append(Workload("R", "RL", "latency", steady, redis=True))
    # E: F, L and I with SSE subscribers (the service's /sse, and the SSE baselines).
    sse = {"transport": "sse"}
    table += [
        Workload("E", f"E{n}", "fanout", functools.partial(fanout, n=n, **sse), **sse)
        for n in config.fanout_sizes
    ]
    table += [
        Workload("E", "EL", "latency", functools.partial(steady, **sse), **sse),
        Workload("E", "EI", "idle", functools.partial(idle, **sse), **sse),
    ]
    heartbeat = str(config.heartbeat_seconds)
    table += [
        Workload(
            "C",
            "C",
            "idle",
            scale,
            default=False,
            baselines=("raw",),
            env=(
                ("HEARTBEAT_INTERVAL_SECONDS", heartbeat),
                ("HEARTBEAT_TIMEOUT_SECONDS", heartbeat),
            ),
        ),
        Workload(
            "G", "G", "latency", gc_tail, default=False, baselines=(), env=(("SERVER_GC_LOG", "1"),)
        ),
    ]
    return table


def select(table: list[Workload], only: list[str] | None) -> list[Workload]:
    """The workloads --only names: letters or names, separated by commas or spaces."""
    if not only:
        return [w for w in table if w.default]
    chosen: set[str] = set()
    for word in (word for arg in only for word in arg.replace(",", " ").split()):
        matched = {w.name for w in table if word in (w.letter, w.name)}
        if not matched:
            raise SystemExit(
                f"--only {word}: no such workload (letters: {' '.join(LETTERS)}; "
                f"names: {' '.join(w.name for w in table)})"
            )
        chosen |= matched
    return [w for w in table if w.name in chosen]


def measure(target: Target, workload: Workload, config: Config, logs: Path) -> dict[str, Any]:
    """Start the workload's fresh servers of `target`, measure, stop them whatever happens."""
    servers: list[Server] = []
    try:
        for _ in range(workload.servers):
            servers.append(Server(target, logs, workload.kind, dict(workload.env)))
        return {**workload.measure(servers, config), "event_loop": servers[0].event_loop()}
    finally:
        for server in servers:
            server.stop()


# --- the projects under test -----------------------------------------------------------------


@dataclass
class Project:
    """A project to measure: rendered here from a template folder, or given rendered."""

    label: str
    source: str  # what the report says it is
    template: Path | None = None
    rendered: Path | None = None


LABELED = re.compile(r"([A-Za-z][\w-]*)=(.+)")


def given_project(spec: str) -> Project:
    """--project [LABEL=]PATH: a template folder (it has cookiecutter.json) or a rendered and
    installed project (it has .venv)."""
    match = LABELED.fullmatch(spec)
    label, path = (match.group(1), match.group(2)) if match else ("service", spec)
    folder = Path(path).resolve()
    if (folder / "cookiecutter.json").is_file():
        return Project(label, f"rendered from the template at {folder}", template=folder)
    if (folder / ".venv" / "bin" / "python").is_file():
        return Project(label, f"the rendered project at {folder}", rendered=folder)
    raise SystemExit(
        f"--project {spec}: {folder} is neither a template (no cookiecutter.json) nor a "
        "rendered and installed project (no .venv)"
    )


def template_at(revision: str, stack: contextlib.ExitStack) -> Project:
    """The template as committed at `revision`, extracted with `git archive` into a temporary
    folder (git worktree would add to the repository's shared list of worktrees)."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise SystemExit(f"--compare {revision}: git {args[0]}: {result.stderr.strip()}")
        return result.stdout.strip()

    commit = git("rev-parse", "--verify", f"{revision}^{{commit}}")
    subject = git("log", "-1", "--format=%h %s", commit)
    parent = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-template-")))
    archive = parent / "template.tar"
    git("archive", "--output", str(archive), commit)
    folder = parent / "template"
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    return Project("old", f"{revision}: {subject}", template=folder)


def projects_to_measure(args: argparse.Namespace, stack: contextlib.ExitStack) -> list[Project]:
    """One project (the service), or two to compare: the first is "old", the second "new"."""
    given = [given_project(spec) for spec in args.project]
    if args.compare is not None:
        by_label = {p.label: p for p in given}
        old = by_label.pop("old", None) or template_at(args.compare, stack)
        new = by_label.pop("new", None) or Project("new", "the working tree", template=ROOT)
        if by_label:
            raise SystemExit(f"--compare: --project {', '.join(by_label)} is neither old nor new")
        return [old, new]
    if not given:
        return [Project("service", "rendered from the template", template=ROOT)]
    if len(given) == 1:
        given[0].label = "service"
        return given
    if len(given) == 2 and given[0].label != given[1].label:
        return given
    raise SystemExit("--project: give one project, or two with distinct labels (old=... new=...)")


def has_redis(project: Path) -> bool:
    return project_answers(project_parts(project)[1])["use_redis"] is True


def prepare(
    project: Project, out: Path, config: Config, secret: str, redis_wanted: bool
) -> tuple[Target, Target | None]:
    """The project's service target and, when R is measured, its Redis variant: rendered with
    use_redis from the same template, or the given project itself if it has Redis."""
    if project.rendered is not None:
        path = project.rendered
        variant = path if redis_wanted and has_redis(path) else None
    else:
        assert project.template is not None
        path = prepare_project(out, project.label, dict(ANSWERS), project.template)
        asks_redis = "use_redis" in template_questions(project.template)
        variant = (
            prepare_project(
                out, f"{project.label}-redis", {**ANSWERS, "use_redis": True}, project.template
            )
            if redis_wanted and asks_redis
            else None
        )
    service = service_target(project.label, path, config, secret)
    return service, (
        service_target(f"{project.label}-redis", variant, config, secret) if variant else None
    )


def baselines(python: Path) -> list[Target]:
    return [
        # uvicorn defaults: auto ws implementation, per-message deflate negotiated when offered.
        textbook_target("textbook", python),
        Target(
            "raw",
            [str(python), "raw_websockets.py", "--host", "{host}", "--port", "{port}"],
            BENCH / "servers",
        ),
        # Not run by default: the textbook manager with uvicorn's deflate off, the framework floor.
        textbook_target("textbook-nodeflate", python, "--ws-per-message-deflate", "false"),
        # SSE only (E): a queue per stream, under sse-starlette and under FastAPI's fastapi.sse.
        sse_target("sse-starlette", python, "sse_starlette_app:app"),
        sse_target("fastapi-sse", python, "fastapi_sse_app:app"),
    ]


def sse_target(name: str, python: Path, app: str) -> Target:
    """An SSE baseline in bench/servers/ under uvicorn (its WebSocket only takes the publisher)."""
    argv = [str(python), "-m", "uvicorn", app, "--host", "{host}", "--port", "{port}"]
    return Target(name, [*argv, "--log-level", "warning"], BENCH / "servers", transports=("sse",))


# What the SSE baselines need in the virtualenv they run in, besides FastAPI: sse-starlette is
# installed into it (with uv, like the project); fastapi.sse comes with FastAPI 0.135 and later.
SSE_BASELINE_NEEDS = {
    "sse-starlette": ("sse_starlette", "sse-starlette>=2"),
    "fastapi-sse": ("fastapi.sse", None),
}


def sse_baselines_ready(python: Path, targets: list[Target]) -> tuple[list[Target], list[str]]:
    """`targets` less the SSE baselines that cannot run in `python`'s virtualenv, and why."""
    kept, notes = [], []
    for target in targets:
        module, requirement = SSE_BASELINE_NEEDS.get(target.name, (None, None))
        if module is None:
            kept.append(target)
            continue
        check = [str(python), "-c", f"import {module}"]
        if subprocess.run(check, capture_output=True, check=False).returncode and requirement:
            uv = rendering.uv_executable()
            install = [uv, "pip", "install", "--python", str(python), requirement]
            subprocess.run(
                install, env=rendering.uv_environment(), capture_output=True, check=False
            )
        if subprocess.run(check, capture_output=True, check=False).returncode:
            notes.append(f"{target.name}: not run, `import {module}` fails in {python}")
        else:
            kept.append(target)
    return kept, notes


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run (the test)")
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (default 5)")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="workloads, e.g. F,L,S: letters F L S X I R E C G (X: S-fill, stalled clients "
        "whose buffers and queue fill; C: scale, G: GC tail, only run when named) or names "
        "(F100, RL...)",
    )
    parser.add_argument(
        "--gc-seconds",
        type=float,
        default=None,
        help="how long G publishes (default 600, the quick mode's 3)",
    )
    parser.add_argument(
        "--uvloop",
        action="store_true",
        help="also measure the service under uvloop and httptools (service-uvloop), beside "
        "it pinned to asyncio and h11",
    )
    parser.add_argument(
        "--compare",
        metavar="REV",
        default=None,
        help="measure the template at git revision REV (old) against the working tree (new), "
        "side by side, interleaved within each run",
    )
    parser.add_argument(
        "--project",
        metavar="[LABEL=]PATH",
        action="append",
        default=[],
        help="a template folder, or a rendered and installed project (with .venv), to measure "
        "instead of rendering the working tree; twice, as old=PATH new=PATH, to compare two",
    )
    parser.add_argument(
        "--targets",
        default=None,
        help="servers to run (default service,textbook,raw; with two projects, their labels), "
        "of those and textbook,raw,textbook-nodeflate",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = Config(**QUICK) if args.quick else Config(runs=5)
    if args.runs is not None:
        config.runs = args.runs
    if args.gc_seconds is not None:
        config.gc_seconds = args.gc_seconds
    selected = select(workloads(config), args.only)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    clients.raise_fd_limit()

    started = time.time()
    # One signing secret per invocation, shared by every project and its Redis variant.
    secret = secrets.token_urlsafe(32)
    with contextlib.ExitStack() as stack:
        projects = projects_to_measure(args, stack)
        compare = len(projects) == 2
        redis_wanted = any(w.redis for w in selected)
        services: list[Target] = []
        variants: list[Target] = []
        redis: dict[str, Any] = {}
        for project in projects:
            service, variant = prepare(project, out, config, secret, redis_wanted)
            services.append(service)
            if variant is not None:
                variants.append(variant)
            elif redis_wanted:
                redis.setdefault("note", "R: not available in")
                redis["note"] += f" {project.label}"
        if "note" in redis:
            redis["note"] += " (no use_redis question, or a given project without Redis)"
        redis["available"] = bool(variants)
        python = Path(services[-1].argv[0])
        others = baselines(python)
        if args.uvloop:
            if compare:
                raise SystemExit("--uvloop: not with two projects")
            services.append(uvloop_variant(services[0], others))
        targets = choose_targets(args.targets, services, others, compare)
        if any(w.transport == "sse" for w in selected):
            targets, notes = sse_baselines_ready(python, targets)
        else:
            targets, notes = [t for t in targets if "ws" in t.transports], []
        needing_redis = [t for t in [*targets, *variants] if t.uses_redis]
        if needing_redis:
            # The project's own tests/redis_server.py starts it, as its tests do.
            starter = needing_redis[-1]
            assert starter.project is not None
            url = stack.enter_context(
                rendering.project_redis(
                    starter.argv[0], starter.project, logs / "redis", server_env(starter, "redis")
                )
            )
            for target in needing_redis:
                target.env["REDIS_URL"] = url

        meta = {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "versions": versions(python),
            "config": {k: v for k, v in vars(config).items()},
            "quick": args.quick,
            "project": projects[0].source,
            "projects": {p.label: p.source for p in projects},
            "answers": {t.name: t.answers for t in [*services, *variants]},
            "redis": redis,
            "workloads": [w.name for w in selected],
            "notes": notes,
        }
        if compare:
            meta["compare"] = {"old": services[0].name, "new": services[1].name}
            meta["project_versions"] = {s.name: versions(Path(s.argv[0])) for s in services}

        rows = run_all(config, selected, targets, variants, logs)
    meta["seconds"] = round(time.time() - started, 1)
    results: dict[str, Any] = {"meta": meta, "rows": rows}
    if compare:
        results["comparison"] = report.compare_figures(rows, services[0].name, services[1].name)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    summary = report.compare_summary(meta, rows) if compare else report.summarize(meta, rows)
    (out / "results.md").write_text(summary)
    report.plot(rows, out / "results.png", [t.name for t in [*targets, *variants]])
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
