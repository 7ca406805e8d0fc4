"""The benchmark harness runs end to end in its quick mode (tiny sizes, one run).

Nothing here is timed: the assertions are about the harness counting right and reporting every
workload, never about speed (the machine running the suite is shared and noisy).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rendering import TEMPLATE

# Rendering and installing the project, then three servers x four workloads.
pytestmark = pytest.mark.timeout(900)


def run_quick_bench(out: Path, *args: str) -> dict[str, Any]:
    """bench/run.py --quick with `args`, writing into `out`; its results.json."""
    result = subprocess.run(
        [sys.executable, str(TEMPLATE / "bench" / "run.py"), "--quick", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=840,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    return results


def test_quick_mode_reports_every_workload_with_sane_numbers(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    results = run_quick_bench(out)
    rows = results["rows"]
    # The service is measured with every feature on, authentication included: its clients
    # connected with a token (the counts below add up only if they were let in).
    assert results["meta"]["answers"]["service"] == {
        "use_rooms": True,
        "use_redis": False,
        "use_sse": True,
        "use_heartbeats": True,
        "auth": "query_token",
    }
    by_key = {(row["target"], row["workload"]): row for row in rows}
    # The WebSocket workloads for the service and the WebSocket baselines; E, the same through
    # SSE, for the service and the SSE baselines (the textbook shape under sse-starlette and
    # under fastapi.sse), one WebSocket publisher driving each.
    for letter, targets, steady, idle_name in (
        ("F", ("service", "textbook", "raw"), ("L", "S"), "I"),
        ("E", ("service", "sse-starlette", "fastapi-sse"), ("EL",), "EI"),
    ):
        fanouts = sorted(
            {w for w in (row["workload"] for row in rows) if w[0] == letter and w[1:].isdigit()}
        )
        assert fanouts, rows
        for target in targets:
            for workload in fanouts:
                row = by_key[(target, workload)]
                # Every subscriber and the publisher (its echo) got every message, exactly once.
                assert row["sent"] > 0
                assert row["deliveries"] == row["sent"] * (row["subscribers"] + 1), row
                assert row["deliveries_per_s"] > 0
                assert row["cpu_us_per_delivery"] >= 0
            for workload in steady:
                row = by_key[(target, workload)]
                assert row["sent"] > 0
                assert row["received"] == row["expected"], row
                assert 0 < row["p50_ms"] <= row["p99_ms"] < 10_000, row
                assert row["cpu_us_per_delivery"] >= 0, row
            idle = by_key[(target, idle_name)]
            memory = [value for key, value in idle.items() if key.startswith("kb_per_conn_")]
            assert memory, idle
            assert all(math.isfinite(value) and value < 10_000 for value in memory), idle
    for target in ("service", "textbook", "raw"):
        assert by_key[(target, "S")]["stalled"] > 0
    # Like for like: raw websockets on uvloop too, which the service's virtualenv has.
    assert by_key[("raw", "L")]["event_loop"] == "uvloop", by_key[("raw", "L")]
    # The WebSocket-only baselines are not measured over SSE, and the SSE ones not over WebSocket.
    assert not [
        row for row in rows if row["target"] in ("textbook", "raw") and row["workload"][0] == "E"
    ]
    assert not [
        row
        for row in rows
        if row["target"] in ("sse-starlette", "fastapi-sse") and row["workload"][0] != "E"
    ]
    summary = (out / "results.md").read_text()
    assert "| figure |" in summary
    assert "E N=" in summary and "SSE CPU per delivery" in summary
    assert "(nothing batched) <= 1.0x raw" in summary
    assert "service: rooms, sse, heartbeats on; redis off; auth=query_token" in summary
    # R runs when the template has a Redis option, and says so when it has none.
    assert "R: not available" in summary or "R1" in summary or "R2" in summary
    assert (out / "results.png").stat().st_size > 1000


def test_compare_mode_measures_two_projects_side_by_side(tmp_path: Path) -> None:
    """--compare REV: the template at REV (old) and the working tree (new), rendered with the
    same answers, every selected workload measured for both in the same run."""
    out = tmp_path / "compare"
    results = run_quick_bench(out, "--compare", "HEAD", "--only", "F,L,S")
    meta, rows = results["meta"], results["rows"]
    assert meta["compare"] == {"old": "old", "new": "new"}
    assert meta["projects"]["old"].startswith("HEAD: "), meta["projects"]
    assert meta["answers"]["old"] == meta["answers"]["new"]
    assert meta["answers"]["new"]["auth"] == "query_token"
    # Only the workloads asked for, each for both projects and nothing else.
    workloads = {row["workload"] for row in rows}
    assert workloads == {w for w in workloads if w.startswith("F")} | {"L", "S"}, workloads
    assert sorted((row["workload"], row["target"]) for row in rows) == sorted(
        (workload, target) for workload in workloads for target in ("old", "new")
    )
    for row in rows:
        if row["workload"].startswith("F"):
            assert row["deliveries"] == row["sent"] * (row["subscribers"] + 1), row
        else:
            assert row["received"] == row["expected"] > 0, row
    # The same-run ratio new/old of every speed and latency figure is a finite, positive number
    # (CPU per delivery is left out: psutil counts in 10 ms ticks, a quick run can spend none).
    figures = {(f["workload"], f["metric"]): f for f in results["comparison"]}
    wanted = [(w, "deliveries_per_s") for w in workloads if w.startswith("F")]
    wanted += [("L", "p50_ms"), ("L", "p99_ms"), ("S", "p99_ms")]
    for key in wanted:
        figure = figures[key]
        assert len(figure["old"]) == len(figure["new"]) == len(figure["ratios"]) == 1, figure
        assert all(math.isfinite(r) and r > 0 for r in figure["ratios"]), figure
    summary = (out / "results.md").read_text()
    assert "| figure | old | new | new / old | verdict |" in summary, summary
    assert "Compared: old = HEAD: " in summary, summary
    table = [line for line in summary.splitlines() if line.startswith("| L ")]
    assert table, summary
    for line in table:
        old, new, ratio = (cell.strip() for cell in line.split("|")[2:5])
        assert all(math.isfinite(float(cell.replace(",", ""))) for cell in (old, new, ratio)), line


def test_quick_scale_and_gc_tail_workloads(tmp_path: Path) -> None:
    """C (idle connections with heartbeats at growing levels, from several source addresses)
    and G (a long L with the server logging its GC pauses): run only when named, C for the
    service and raw `websockets`, G for the service."""
    out = tmp_path / "scale"
    results = run_quick_bench(out, "--only", "C,G")
    rows = results["rows"]
    by_key = {(row["target"], row["workload"]): row for row in rows}
    assert sorted(by_key) == [("raw", "C"), ("service", "C"), ("service", "G")], sorted(by_key)
    for target in ("service", "raw"):
        row = by_key[(target, "C")]
        levels = sorted(
            int(key.rsplit("_", 1)[1])
            for key in row
            if key.startswith("kb_per_conn_") and key[-1].isdigit()
        )
        assert len(levels) >= 2, row
        for level in levels:
            # Every connection open at that level got every broadcast, exactly once.
            assert row[f"delivered_pct_{level}"] == 100.0, row
            assert 0 < row[f"broadcast_ms_{level}"] < 60_000, row
            assert 0 < row[f"kb_per_conn_{level}"] < 1_000, row
        assert row["connections"] == levels[-1], row
        # Held through several heartbeat intervals (interval and timeout alike, so a client
        # that did not answer would be closed within three), every ping answered, none closed.
        assert row["held_s"] >= 3 * row["heartbeat_s"], row
        assert row["pings_per_conn"] >= 3, row
        assert row["closed"] == 0, row
    tail = by_key[("service", "G")]
    assert tail["received"] == tail["expected"] > 0, tail
    assert 0 < tail["p50_ms"] <= tail["p99_ms"] <= tail["p999_ms"] <= tail["max_ms"], tail
    assert tail["gc_pauses"] == len(tail["gc_pause_log"]), tail
    assert tail["gc_pauses_logged"] > 0, "the server logged no GC pause: SERVER_GC_LOG unread?"
    summary = (out / "results.md").read_text()
    assert "C at the top, after the hold" in summary, summary
    assert "G: longest GC pause (ms)" in summary, summary
    assert "longest GC pause <= 20 ms (G)" in summary, summary


def test_uvloop_option_measures_the_service_under_both_loops(tmp_path: Path) -> None:
    """--uvloop: the service under uvloop and httptools beside itself pinned to asyncio and
    h11, in the same run; each row says which loop its server process really ran."""
    out = tmp_path / "uvloop"
    results = run_quick_bench(out, "--only", "L", "--uvloop", "--targets", "service,service-uvloop")
    by_target = {row["target"]: row for row in results["rows"]}
    assert sorted(by_target) == ["service", "service-uvloop"], by_target
    assert by_target["service"]["event_loop"] == "asyncio", by_target
    assert by_target["service-uvloop"]["event_loop"] == "uvloop", by_target
    for row in by_target.values():
        assert row["received"] == row["expected"] > 0, row
    summary = (out / "results.md").read_text()
    assert "| figure | asyncio | uvloop | uvloop / asyncio |" in summary, summary
