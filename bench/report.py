"""Medians, spreads, same-run ratios to the baselines, the markdown table and the PNG."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

__all__ = ["METRICS", "compare_summary", "compare_table", "plot", "summarize", "table"]

SERVICE, BASELINES = "service", ("textbook", "raw")
REDIS = "service-redis"

# (workload, metric, label, lower is better)
METRICS: list[tuple[str, str, str, bool]] = [
    ("F100", "cpu_us_per_delivery", "F N=100: server CPU per delivery (µs)", True),
    ("F100", "deliveries_per_s", "F N=100: deliveries/s", False),
    ("F1000", "cpu_us_per_delivery", "F N=1,000: server CPU per delivery (µs)", True),
    ("F1000", "deliveries_per_s", "F N=1,000: deliveries/s", False),
    ("L", "p50_ms", "L 1,000 x 10/s: p50 (ms)", True),
    ("L", "p99_ms", "L 1,000 x 10/s: p99 (ms)", True),
    ("L", "cpu_us_per_delivery", "L 1,000 x 10/s: server CPU per delivery (µs)", True),
    ("S", "p99_ms", "S (some stalled): healthy p99 (ms)", True),
    ("S", "healthy_delivered_pct", "S: delivered to healthy clients (%)", False),
    ("S", "stalled_closed", "S: stalled clients closed by the server", False),
    ("S-fill", "p99_ms", "S-fill (stalled buffers fill): healthy p99 (ms)", True),
    ("S-fill", "healthy_delivered_pct", "S-fill: delivered to healthy clients (%)", False),
    ("S-fill", "stalled_closed", "S-fill: stalled clients closed by the server", False),
    ("S-fill", "server_rss_growth_mb", "S-fill: server memory growth (MB)", True),
    ("I", "kb_per_conn_2000", "I: memory per idle connection at 2,000 (KB)", True),
    ("I", "kb_per_conn_10000", "I: memory per idle connection at 10,000 (KB)", True),
]


def _values(
    rows: list[dict[str, Any]], target: str, workload: str, metric: str
) -> dict[int, float]:
    return {
        row["run"]: float(row[metric])
        for row in rows
        if row["target"] == target and row["workload"] == workload and metric in row
    }


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if value and abs(value) < 0.1:
        return f"{value:.2g}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    median = statistics.median(values)
    if len(values) == 1:
        return _fmt(median)
    return f"{_fmt(median)} ({_fmt(min(values))}–{_fmt(max(values))})"


def metric_summary(rows: list[dict[str, Any]], workload: str, metric: str) -> dict[str, Any]:
    """Median and spread per server; medians over runs of the same-run ratio service/baseline."""
    summary: dict[str, Any] = {}
    per_target = {t: _values(rows, t, workload, metric) for t in (SERVICE, *BASELINES)}
    for target, values in per_target.items():
        summary[target] = sorted(values.values())
    for baseline in BASELINES:
        ratios = [
            per_target[SERVICE][run] / per_target[baseline][run]
            for run in per_target[SERVICE]
            if per_target[baseline].get(run) not in (None, 0.0)
        ]
        summary[f"ratio_{baseline}"] = sorted(ratios)
    return summary


def derive(rows: list[dict[str, Any]]) -> None:
    """Add figures computed from others: how busy the server was during a fanout run (below
    100%, deliveries/s was limited by the clients sharing the machine, not by the server), and
    how much of what was published arrived before the run's deadline (a server too slow for
    the publisher, which only its own echoes pace, falls behind and is cut off)."""
    for row in rows:
        if "deliveries" in row and "cpu_us_per_delivery" in row and "server_busy_pct" not in row:
            cpu = row["cpu_us_per_delivery"] * row["deliveries"] / 1e6
            row["server_busy_pct"] = 100 * cpu / max(1e-9, row["wall_s"])
        if row.get("expected") and "delivered_pct" not in row:
            row["delivered_pct"] = (
                100 * row.get("deliveries", row.get("received", 0)) / row["expected"]
            )


def metrics_in(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, bool]]:
    """METRICS, with the fanout sizes and idle levels actually run (the quick mode's are tiny)."""
    derive(rows)
    found: list[tuple[str, str, str, bool]] = []
    fanouts = sorted(
        {r["workload"] for r in rows if r["workload"].startswith("F")}, key=lambda w: int(w[1:])
    )
    for workload in fanouts:
        n = f"{int(workload[1:]):,}"
        found.append(
            (workload, "cpu_us_per_delivery", f"F N={n}: server CPU per delivery (µs)", True)
        )
        found.append((workload, "deliveries_per_s", f"F N={n}: deliveries/s", False))
        found.append(
            (workload, "server_busy_pct", f"F N={n}: server CPU busy (% of one core)", False)
        )
    found += [m for m in METRICS if m[0] in ("L", "S", "S-fill")]
    found += sse_metrics(rows)
    levels = sorted(
        {
            int(k.rsplit("_", 1)[1])
            for r in rows
            if r["workload"] == "I"
            for k in r
            if k.startswith("kb_per_conn_")
        }
    )
    for level in levels:
        found.append(
            ("I", f"kb_per_conn_{level}", f"I: memory per idle connection at {level:,} (KB)", True)
        )
    found += scale_metrics(rows)
    return [m for m in found if any(r["workload"] == m[0] and m[1] in r for r in rows)]


def scale_metrics(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, bool]]:
    """C at the levels actually run, and G: the long L's tail and the server's GC pauses."""
    found: list[tuple[str, str, str, bool]] = []
    levels = sorted(
        {
            int(k.rsplit("_", 1)[1])
            for r in rows
            if r["workload"] == "C"
            for k in r
            if k.startswith("kb_per_conn_") and k[-1].isdigit()
        }
    )
    for level in levels:
        at = f"C {level:,} idle, heartbeats on"
        found += [
            ("C", f"kb_per_conn_{level}", f"{at}: memory per connection (KB)", True),
            ("C", f"broadcast_ms_{level}", f"{at}: one publish to the last delivery (ms)", True),
            ("C", f"broadcast_cpu_ms_{level}", f"{at}: server CPU of that broadcast (ms)", True),
        ]
    found += [
        ("C", "kb_per_conn_held", "C at the top, after the hold: memory per connection (KB)", True),
        ("C", "closed", "C: connections closed during the hold", True),
        ("C", "pings_per_conn", "C: heartbeat pings answered per connection", False),
    ]
    subscribers = {r["subscribers"] for r in rows if r["workload"] == "G"}
    at = f"G {max(subscribers):,} subscribers" if subscribers else "G"
    found += [
        ("G", "p50_ms", f"{at}: p50 (ms)", True),
        ("G", "p99_ms", f"{at}: p99 (ms)", True),
        ("G", "p999_ms", f"{at}: p99.9 (ms)", True),
        ("G", "max_ms", f"{at}: maximum (ms)", True),
        ("G", "p999_over_p99", "G: p99.9 / p99", True),
        ("G", "gc_max_pause_ms", "G: longest GC pause (ms)", True),
        ("G", "gc2_max_ms", "G: longest full (generation 2) collection (ms)", True),
        ("G", "gc_pauses", "G: GC pauses during the run", True),
    ]
    return found


def sse_metrics(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, bool]]:
    """E: the F, L and I figures with SSE subscribers, at the sizes actually run."""
    found: list[tuple[str, str, str, bool]] = []
    fanouts = sorted(
        {r["workload"] for r in rows if r["workload"][0] == "E" and r["workload"][1:].isdigit()},
        key=lambda w: int(w[1:]),
    )
    for workload in fanouts:
        n = f"{int(workload[1:]):,}"
        found += [
            (workload, "cpu_us_per_delivery", f"E N={n} SSE: server CPU per delivery (µs)", True),
            (workload, "deliveries_per_s", f"E N={n} SSE: deliveries/s", False),
            (workload, "delivered_pct", f"E N={n} SSE: delivered by the deadline (%)", False),
        ]
    subscribers = {r["subscribers"] for r in rows if r["workload"] == "EL"}
    at = f"{max(subscribers):,}" if subscribers else "N"
    found += [
        ("EL", "p50_ms", f"EL SSE {at} x 10/s: p50 (ms)", True),
        ("EL", "p99_ms", f"EL SSE {at} x 10/s: p99 (ms)", True),
        ("EL", "cpu_us_per_delivery", f"EL SSE {at} x 10/s: server CPU per delivery (µs)", True),
        ("EL", "delivered_pct", "EL SSE: delivered by the deadline (%)", False),
    ]
    levels = sorted(
        {
            int(k.rsplit("_", 1)[1])
            for r in rows
            if r["workload"] == "EI"
            for k in r
            if k[:3] == "kb_"
        }
    )
    found += [
        ("EI", f"kb_per_conn_{level}", f"EI: memory per idle SSE stream at {level:,} (KB)", True)
        for level in levels
    ]
    return found


def table(
    rows: list[dict[str, Any]], metrics: list[tuple[str, str, str, bool]] | None = None
) -> str:
    metrics = metrics_in(rows) if metrics is None else metrics
    extra = sorted({r["target"] for r in rows} - {SERVICE, *BASELINES})
    lines = [
        "| figure | service | textbook | raw websockets | service / textbook | service / raw |"
        + "".join(f" {name} |" for name in extra),
        "| --- | ---: | ---: | ---: | ---: | ---: |" + " ---: |" * len(extra),
    ]
    for workload, metric, label, _lower in metrics:
        s = metric_summary(rows, workload, metric)
        if not any(_values(rows, r["target"], workload, metric) for r in rows):
            continue
        lines.append(
            f"| {label} | {_cell(s[SERVICE])} | {_cell(s['textbook'])} | {_cell(s['raw'])} | "
            f"{_cell(s['ratio_textbook'])} | {_cell(s['ratio_raw'])} |"
            + "".join(
                f" {_cell(sorted(_values(rows, name, workload, metric).values()))} |"
                for name in extra
            )
        )
    return "\n".join(lines)


def _median(rows: list[dict[str, Any]], target: str, workload: str, metric: str) -> float:
    values = list(_values(rows, target, workload, metric).values())
    return statistics.median(values) if values else float("nan")


def targets(rows: list[dict[str, Any]]) -> list[tuple[str, bool | None, str]]:
    """The issue's targets: (target, met?, the numbers)."""
    checks: list[tuple[str, bool | None, str]] = []

    def ratio(workload: str, metric: str, baseline: str) -> float:
        ratios = metric_summary(rows, workload, metric)[f"ratio_{baseline}"]
        return statistics.median(ratios) if ratios else float("nan")

    cpu = _median(rows, SERVICE, "F1000", "cpu_us_per_delivery")
    checks.append(("CPU per delivery at 1,000 <= 3 µs", _ok(cpu <= 3, cpu), f"{_fmt(cpu)} µs"))
    rt, rr = (
        ratio("F1000", "deliveries_per_s", "textbook"),
        ratio("F1000", "deliveries_per_s", "raw"),
    )
    checks.append(("deliveries/s >= 3x textbook", _ok(rt >= 3, rt), f"{_fmt(rt)}x"))
    checks.append(("deliveries/s >= 1.0x raw", _ok(rr >= 1.0, rr), f"{_fmt(rr)}x"))
    kb = _median(rows, SERVICE, "I", "kb_per_conn_10000")
    checks.append(("idle memory <= 20 KB/conn at 10,000", _ok(kb <= 20, kb), f"{_fmt(kb)} KB"))
    p99 = ratio("L", "p99_ms", "raw")
    checks.append(("p99 at 1,000 x 10/s <= 1.1x raw", _ok(p99 <= 1.1, p99), f"{_fmt(p99)}x"))
    unbatched = ratio("L", "cpu_us_per_delivery", "raw")
    checks.append(
        (
            "server CPU per delivery at 1,000 x 10/s (nothing batched) <= 1.0x raw",
            _ok(unbatched <= 1.0, unbatched),
            f"{_fmt(unbatched)}x",
        )
    )
    l99, s99 = _median(rows, SERVICE, "L", "p99_ms"), _median(rows, SERVICE, "S", "p99_ms")
    change = (s99 / l99 - 1) * 100 if l99 else float("nan")
    checks.append(
        (
            "stalled clients change others' p99 by <= 20%",
            _ok(abs(change) <= 20, change),
            f"{_fmt(l99)} -> {_fmt(s99)} ms ({change:+.0f}%)",
        )
    )
    checks += redis_targets(rows)
    checks += sse_targets(rows)
    checks += scale_targets(rows)
    closed = [r for r in rows if r["target"] == SERVICE and r["workload"] == "S-fill"]
    all_closed = all(r.get("stalled_closed", 0) == r.get("stalled", -1) for r in closed)
    detail = ", ".join(f"{r.get('stalled_closed', 0)}/{r.get('stalled', 0)}" for r in closed)
    checks.append(
        (
            "each stalled client closed once its queue is full (S-fill)",
            all_closed if closed else None,
            f"closed per run: {detail}",
        )
    )
    return checks


def scale_targets(rows: list[dict[str, Any]]) -> list[tuple[str, bool | None, str]]:
    """C and G (issue 19), when they ran: memory per connection at the top level, everyone
    still connected after the hold, the longest GC pause and p99.9 against p99."""
    checks: list[tuple[str, bool | None, str]] = []
    scale = [r for r in rows if r["target"] == SERVICE and r["workload"] == "C"]
    if scale:
        top = max(
            int(k.rsplit("_", 1)[1])
            for k in scale[0]
            if k.startswith("kb_per_conn_") and k[-1].isdigit()
        )
        kb = _median(rows, SERVICE, "C", f"kb_per_conn_{top}")
        checks.append((f"memory <= 15 KB/conn at {top:,} (C)", _ok(kb <= 15, kb), f"{_fmt(kb)} KB"))
        closed = sum(r["closed"] for r in scale)
        checks.append(
            (
                "every connection held through the heartbeat intervals (C)",
                closed == 0,
                f"{closed} closed, {_fmt(_median(rows, SERVICE, 'C', 'pings_per_conn'))} "
                "pings answered each",
            )
        )
    if any(r["target"] == SERVICE and r["workload"] == "G" for r in rows):
        pause = _median(rows, SERVICE, "G", "gc_max_pause_ms")
        checks.append(
            ("longest GC pause <= 20 ms (G)", _ok(pause <= 20, pause), f"{_fmt(pause)} ms")
        )
        tail = _median(rows, SERVICE, "G", "p999_over_p99")
        checks.append(("p99.9 <= 1.5x p99 (G)", _ok(tail <= 1.5, tail), f"{_fmt(tail)}x"))
    return checks


def redis_targets(rows: list[dict[str, Any]]) -> list[tuple[str, bool | None, str]]:
    """Redis against the in-memory broker of the same run: R1000x1 / F1000, RL - L, and
    R*x2 (two processes) delivering every message once."""
    in_memory = _values(rows, SERVICE, "F1000", "deliveries_per_s")
    through_redis = _values(rows, REDIS, "R1000x1", "deliveries_per_s")
    ratios = [through_redis[run] / in_memory[run] for run in through_redis if in_memory.get(run)]
    ratio = statistics.median(ratios) if ratios else float("nan")
    l99, r99 = _values(rows, SERVICE, "L", "p99_ms"), _values(rows, REDIS, "RL", "p99_ms")
    extra = [r99[run] - l99[run] for run in r99 if run in l99]
    more = statistics.median(extra) if extra else float("nan")
    pairs = [r for r in rows if r["target"] == REDIS and r["workload"].endswith("x2")]
    once = all(r["deliveries"] == r["expected"] for r in pairs)
    return [
        (
            "Redis, one process: deliveries/s >= 0.8x in-memory (R1000x1 / F1000)",
            _ok(ratio >= 0.8, ratio),
            f"{_fmt(ratio)}x",
        ),
        (
            "Redis, one process: p99 at most 2 ms above in-memory (RL - L)",
            _ok(more <= 2, more),
            f"{_fmt(more)} ms",
        ),
        (
            "Redis, two processes: every message delivered once (R*x2)",
            once if pairs else None,
            ", ".join(f"{r['deliveries']:,}/{r['expected']:,}" for r in pairs),
        ),
    ]


SSE_BASELINES = ("sse-starlette", "fastapi-sse")


def sse_targets(rows: list[dict[str, Any]]) -> list[tuple[str, bool | None, str]]:
    """SSE against the service's own WebSocket figures and the better SSE baseline, each ratio
    within one run, then the median over the runs."""

    def median_ratio(top: dict[int, float], bottom: dict[int, float]) -> float:
        ratios = [top[run] / bottom[run] for run in top if bottom.get(run)]
        return statistics.median(ratios) if ratios else float("nan")

    sse_cpu = _values(rows, SERVICE, "E1000", "cpu_us_per_delivery")
    ws_cpu = _values(rows, SERVICE, "F1000", "cpu_us_per_delivery")
    per_baseline = [_values(rows, b, "E1000", "cpu_us_per_delivery") for b in SSE_BASELINES]
    best = {
        run: min(values[run] for values in per_baseline if run in values)
        for run in sse_cpu
        if any(run in values for values in per_baseline)
    }
    to_ws, to_best = median_ratio(sse_cpu, ws_cpu), median_ratio(sse_cpu, best)
    memory = median_ratio(
        _values(rows, SERVICE, "EI", "kb_per_conn_10000"),
        _values(rows, SERVICE, "I", "kb_per_conn_10000"),
    )
    return [
        (
            "SSE CPU per delivery at 1,000 <= 1.5x the service's WebSocket (E1000 / F1000)",
            _ok(to_ws <= 1.5, to_ws),
            f"{_fmt(to_ws)}x",
        ),
        (
            "SSE CPU per delivery at 1,000 <= 0.5x the better SSE baseline",
            _ok(to_best <= 0.5, to_best),
            f"{_fmt(to_best)}x",
        ),
        (
            "idle memory per SSE stream <= 1.2x per WebSocket at 10,000 (EI / I)",
            _ok(memory <= 1.2, memory),
            f"{_fmt(memory)}x",
        ),
    ]


def _ok(condition: bool, value: float) -> bool | None:
    return None if math.isnan(value) else condition


def describe_answers(answers: dict[str, Any]) -> str:
    """'rooms, sse, heartbeats on; auth=query_token': the features a project was rendered with."""
    on = [name.removeprefix("use_") for name, value in answers.items() if value is True]
    off = [name.removeprefix("use_") for name, value in answers.items() if value is False]
    parts = [f"{', '.join(on)} on"] if on else []
    parts += [f"{', '.join(off)} off"] if off else []
    parts += [f"{name}={value}" for name, value in answers.items() if not isinstance(value, bool)]
    return "; ".join(parts)


def _header(meta: dict[str, Any]) -> list[str]:
    """The machine, the versions, the date and the answers the projects were rendered with."""
    m, v = meta["machine"], meta["versions"]
    runs = meta["config"]["runs"]
    # results.json written before the answers were recorded has none: no line for them then.
    answers = meta.get("answers") or {}
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, Linux {m['kernel']} "
        f"(load {m['load_at_start']:.1f} at start). Python {v['python']}, FastAPI {v['fastapi']}, "
        f"Starlette {v['starlette']}, uvicorn {v['uvicorn']}, websockets {v['websockets']}. "
        f"{meta['date']}, {runs} run(s), {meta.get('seconds', 0):.0f} s.",
        "",
    ]
    if answers:
        lines += [
            "Answers: "
            + ". ".join(f"{target}: {describe_answers(a)}" for target, a in answers.items())
            + ".",
            "",
        ]
    return lines


def summarize(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = _header(meta)
    lines += [
        "Median over the runs (min–max in brackets); ratios are computed within each run, then "
        "their median is shown.",
        "",
        table(rows),
        "",
    ]
    redis_rows = [r for r in rows if r["workload"].startswith("R")]
    if redis_rows:
        lines += ["Redis (R):", ""]
        for workload in sorted({r["workload"] for r in redis_rows}):
            sel = [r for r in redis_rows if r["workload"] == workload]
            if "deliveries_per_s" in sel[0]:
                dps = [r["deliveries_per_s"] for r in sel]
                cpu = [r["cpu_us_per_delivery"] for r in sel]
                lines.append(
                    f"- {workload}: {_cell(dps)} deliveries/s, {_cell(cpu)} µs CPU/delivery"
                )
            elif "p99_ms" in sel[0]:
                p50 = [r["p50_ms"] for r in sel]
                p99 = [r["p99_ms"] for r in sel]
                lines.append(
                    f"- {workload} (L through Redis): p50 {_cell(p50)} ms, p99 {_cell(p99)} ms"
                )
            else:
                lines.append(f"- {workload}: {sel[0].get('note')}")
        lines.append("")
    else:
        lines += [meta["redis"].get("note", "R: not run"), ""]
    lines += uvloop_lines(rows)
    lines += ["Targets (the service, every feature on):", ""]
    for name, met, numbers in targets(rows):
        mark = {True: "met", False: "NOT met", None: "not measured"}[met]
        lines.append(f"- {name}: **{mark}** ({numbers})")
    return "\n".join(lines) + "\n"


def uvloop_lines(rows: list[dict[str, Any]]) -> list[str]:
    """--uvloop: every figure of service-uvloop against the service (asyncio, h11), as the
    median of the same-run ratios."""
    uvloop = f"{SERVICE}-uvloop"
    if not any(r["target"] == uvloop for r in rows):
        return []
    lines = [
        f"uvloop and httptools ({uvloop}) against asyncio and h11 ({SERVICE}), same runs:",
        "",
        "| figure | asyncio | uvloop | uvloop / asyncio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for workload, metric, label, _lower in metrics_in(rows):
        base = _values(rows, SERVICE, workload, metric)
        other = _values(rows, uvloop, workload, metric)
        if not base or not other:
            continue
        ratios = sorted(other[run] / base[run] for run in other if base.get(run) not in (None, 0.0))
        lines.append(
            f"| {label} | {_cell(sorted(base.values()))} | {_cell(sorted(other.values()))} | "
            f"{_cell(ratios)} |"
        )
    return [*lines, ""]


# --- two projects side by side (run.py --compare) ------------------------------------------

# Figures with no better direction: how busy the server was, how many stalled clients it closed
# (S: none need be; S-fill: each, once its queue is full) are context, not a score.
NEUTRAL = {"server_busy_pct", "stalled_closed"}


def redis_metrics(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, bool]]:
    """The R workloads actually run: fanout figures for R<N>x<servers>, latency for RL."""
    found: list[tuple[str, str, str, bool]] = []
    names = dict.fromkeys(r["workload"] for r in rows if r["workload"].startswith("R"))
    for workload in names:
        if workload == "RL":
            found.append((workload, "p50_ms", "RL (L through Redis): p50 (ms)", True))
            found.append((workload, "p99_ms", "RL (L through Redis): p99 (ms)", True))
            continue
        n, servers = workload[1:].split("x")
        where = f"R N={int(n):,}, {servers} server(s)"
        found.append((workload, "cpu_us_per_delivery", f"{where}: CPU per delivery (µs)", True))
        found.append((workload, "deliveries_per_s", f"{where}: deliveries/s", False))
    return found


def _label_target(label: str, workload: str) -> str:
    """Whose rows a project's figure is: an R workload ran on its Redis variant."""
    return f"{label}-redis" if workload.startswith("R") else label


def _verdict(old: list[float], new: list[float], lower: bool, metric: str) -> str:
    """worse / better only when the two min–max ranges do not overlap, over three runs at least
    (the range of one or two runs says little about the spread)."""
    if metric in NEUTRAL or len(old) < 3 or len(new) < 3:
        return "–"
    if max(new) < min(old):
        return "better" if lower else "worse"
    if min(new) > max(old):
        return "worse" if lower else "better"
    return "within spread"


def compare_figures(rows: list[dict[str, Any]], old: str, new: str) -> list[dict[str, Any]]:
    """Each figure for both projects: the per-run values, the same-run ratios new/old, and
    whether new is worse, better or within the run-to-run spread."""
    figures = []
    for workload, metric, label, lower in metrics_in(rows) + redis_metrics(rows):
        before = _values(rows, _label_target(old, workload), workload, metric)
        after = _values(rows, _label_target(new, workload), workload, metric)
        if not before and not after:
            continue
        ratios = [after[run] / before[run] for run in after if before.get(run)]
        figures.append(
            {
                "workload": workload,
                "metric": metric,
                "label": label,
                "lower_is_better": lower,
                "old": sorted(before.values()),
                "new": sorted(after.values()),
                "ratios": sorted(ratios),
                "verdict": _verdict(list(before.values()), list(after.values()), lower, metric),
            }
        )
    return figures


def compare_table(rows: list[dict[str, Any]], old: str, new: str) -> str:
    """The markdown table: old, new, new / old, the verdict, then any baseline measured too."""
    ours = {old, new, f"{old}-redis", f"{new}-redis"}
    extra = sorted({r["target"] for r in rows} - ours)
    lines = [
        f"| figure | {old} | {new} | {new} / {old} | verdict |" + "".join(f" {e} |" for e in extra),
        "| --- | ---: | ---: | ---: | --- |" + " ---: |" * len(extra),
    ]
    for figure in compare_figures(rows, old, new):
        arrow = "" if figure["metric"] in NEUTRAL else " ↓" if figure["lower_is_better"] else " ↑"
        cells = [_cell(figure["old"]), _cell(figure["new"]), _cell(figure["ratios"])]
        lines.append(
            f"| {figure['label']}{arrow} | {' | '.join(cells)} | {figure['verdict']} |"
            + "".join(
                f" {_cell(sorted(_values(rows, e, figure['workload'], figure['metric']).values()))} |"
                for e in extra
            )
        )
    return "\n".join(lines)


def compare_summary(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    old, new = meta["compare"]["old"], meta["compare"]["new"]
    lines = _header(meta)
    lines += [
        f"Compared: {old} = {meta['projects'][old]}; {new} = {meta['projects'][new]}.",
        "",
    ]
    versions = meta.get("project_versions", {})
    if versions and versions.get(old) != versions.get(new):
        lines += [
            "Library versions differ: "
            + "; ".join(
                f"{label}: " + ", ".join(f"{k} {v}" for k, v in versions[label].items())
                for label in (old, new)
            )
            + ".",
            "",
        ]
    lines += [
        (
            "Median over the runs (min–max in brackets). Within each run every workload measures "
            f"{old} and {new} back to back (the order flips from run to run); {new} / {old} is "
            "computed within each run, then its median shown. ↓ lower is better, ↑ higher is "
            f"better; verdict: worse or better when the min–max ranges of {old} and {new} do "
            "not overlap (three runs at least), else within spread."
        ),
        "",
        compare_table(rows, old, new),
        "",
    ]
    if meta["redis"].get("note"):
        lines += [meta["redis"]["note"], ""]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, order: list[str] | None = None) -> None:
    """One bar chart per figure: each server's median with min–max error bars (the servers in
    `order`, by default the service, the baselines and then the others)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = metrics_in(rows)
    shown = [
        m
        for m in shown
        if m[1]
        not in ("healthy_delivered_pct", "delivered_pct", "stalled_closed", "server_busy_pct")
        and not (m[0] == "S-fill" and m[1] == "server_rss_growth_mb")
    ]
    columns = 3
    lines = max(1, math.ceil(len(shown) / columns))
    figure, axes = plt.subplots(lines, columns, figsize=(4 * columns, 2.6 * lines), squeeze=False)
    colors = {
        "service": "#2a7ab9",
        "textbook": "#c0504d",
        "raw": "#7f7f7f",
        "textbook-nodeflate": "#e8a33d",
        "sse-starlette": "#8c6bb1",
        "fastapi-sse": "#41ab5d",
        "service-uvloop": "#6baed6",
        "old": "#9fb7cc",
        "new": "#2a7ab9",
    }
    extra = sorted({r["target"] for r in rows} - {SERVICE, *BASELINES})
    order = order or [SERVICE, *BASELINES, *extra]
    for ax, (workload, metric, label, lower) in zip(axes.flat, shown, strict=False):
        names, medians, low, high = [], [], [], []
        for target in order:
            values = list(_values(rows, target, workload, metric).values())
            if not values:
                continue
            median = statistics.median(values)
            names.append(target)
            medians.append(median)
            low.append(median - min(values))
            high.append(max(values) - median)
        ax.bar(
            names,
            medians,
            yerr=[low, high],
            color=[colors.get(n, "#999999") for n in names],
            capsize=3,
        )
        ax.set_title(label + (" ↓" if lower else " ↑"), fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
