"""The results as tables (rich if available, else plain text; Markdown for the docs) and the
targets, met or not. Everything here reads the run's JSON, so an old `latest.json` can be
shown again: `python -m bench.report [PATH] [--markdown]`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import targets

Row = Sequence[str]


@dataclass
class Section:
    title: str
    headers: Row
    rows: list[Row]
    notes: list[str]


def p_rate(report: dict[str, Any]) -> float:
    """P for ratios: the higher of the measurements at the start and the end (other load on
    the machine can only lower it; the limit is the best seen)."""
    return targets.p_rate(report)


def fmt(x: float | None, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.{digits}f}"


def _ok(r: dict[str, Any]) -> str:
    if r.get("error"):
        return "error"
    bad = [f"{k} {r[k]}" for k in ("lost", "duplicated", "failed") if r.get(k)]
    return ", ".join(bad) or "✓"


def machine_section(report: dict[str, Any]) -> Section:
    m = report["machine"]
    p = report["P"]
    rows: list[Row] = [(k, str(v)) for k, v in m.items()]
    for when, r in p.items():
        if r:
            rows.append(
                (
                    f"P ({when}, {r['inflight']} in flight)",
                    f"{fmt(r['rate'])}/s, {r['cpu_ms_per_job']:.2f} ms CPU per job "
                    f"({r['child_cpu_ms_per_job']:.2f} ms the job's own)",
                )
            )
    rows.append(("mode", f"{report['mode']}, started {report['started']}"))
    return Section("Machine", ("", ""), rows, [])


def drain_section(report: dict[str, Any]) -> Section | None:
    rows_in = report["workloads"].get("W1")
    if not rows_in:
        return None
    p = p_rate(report)
    job_cpu = _job_cpu_ms(report)
    best = max((r["rate"] for r in targets.clobi_rows(rows_in, shared=False)), default=0.0)
    rows: list[Row] = []
    for r in rows_in:
        cpu = r["cpu_s"] * 1000 / r["jobs"] if r["jobs"] and not r.get("error") else math.nan
        rows.append(
            (
                r["system"],
                r["config"],
                fmt(r["jobs"]),
                _ok(r),
                fmt(r["wall_s"], 2),
                fmt(r["rate"]),
                fmt(r["rate"] / p, 2),
                fmt(r["warm_rate"]),
                fmt(r["warm_rate"] / p, 2),
                fmt(cpu, 2),
                fmt(cpu - job_cpu, 2),
                fmt(best / r["rate"], 2) if r["rate"] else "–",
            )
        )
    headers = (
        "system",
        "config",
        "jobs",
        "ok",
        "wall s",
        "jobs/s",
        "× P",
        "warm jobs/s",
        "warm × P",
        "CPU ms/job",
        "overhead ms/job",
        "Clobi ÷ this",
    )
    notes = [
        "jobs/s: from starting the agents/workers on a full queue until the last job is seen "
        "done; warm: from the first job seen done (start-up left out).",
        f"overhead = CPU of every process involved per job − the job's own ({job_cpu:.2f} ms, "
        "from P); Redis's CPU is counted for the Redis peers, the server's and its PostgreSQL "
        "backends' for Clobi shared. 'Clobi ÷ this' uses Clobi's best embedded row.",
        *[
            f"{r['system']} ({r['config']}): {r['note'] or r['error']}"
            for r in rows_in
            if r.get("note") or r.get("error")
        ],
    ]
    return Section("W1 drain: pre-queued /bin/true jobs", headers, rows, notes)


def _job_cpu_ms(report: dict[str, Any]) -> float:
    values = [p["child_cpu_ms_per_job"] for p in report["P"].values() if p]
    return sum(values) / len(values) if values else math.nan


def latency_section(report: dict[str, Any]) -> Section | None:
    rows_in = report["workloads"].get("W2")
    if not rows_in:
        return None
    rows: list[Row] = [
        (
            r["system"],
            r["config"],
            fmt(len(r["samples_s"])),
            _ok(r),
            fmt(r["p50_ms"], 2),
            fmt(r["p90_ms"], 2),
            fmt(r["p99_ms"], 2),
            fmt(max(r["samples_s"], default=math.nan) * 1000, 2),
        )
        for r in rows_in
    ]
    notes = [
        "floor: spawning one /bin/true and waiting for it, nothing else. Clobi embedded waits "
        "with Client.wait (woken by the store when the report commits); shared polls the job's "
        "state every 0.5 ms over HTTP, through the server; peers use their own result wait.",
        *[
            f"{r['system']} ({r['config']}): {r['note'] or r['error']}"
            for r in rows_in
            if r.get("note") or r.get("error")
        ],
    ]
    headers = ("system", "config", "jobs", "ok", "p50 ms", "p90 ms", "p99 ms", "max ms")
    return Section("W2 latency: one job at a time, submit → done", headers, rows, notes)


def submit_section(report: dict[str, Any]) -> Section | None:
    r = report["workloads"].get("W3")
    if not r:
        return None
    row = (
        fmt(r["jobs"]),
        _ok(r),
        fmt(r["seconds"], 2),
        fmt(r["rate"]),
        fmt(r["rss_before_mib"], 1),
        fmt(r["peak_rss_mib"], 1),
    )
    headers = ("jobs", "ok", "seconds", "jobs/s", "RSS before MiB", "peak RSS MiB")
    return Section("W3 submission: one array through Client.submit", headers, [row], [])


def scale_section(report: dict[str, Any]) -> Section | None:
    rows_in = report["workloads"].get("W4")
    if not rows_in:
        return None
    rows: list[Row] = [
        (
            fmt(r["store_jobs"]),
            _ok(r),
            fmt(r["build_s"], 1),
            fmt(r["claim_finish_rate"]),
            fmt(r["finish_claim_rate"]),
            fmt(r["list_ms"], 2),
            fmt(r["ls_cli_ms"], 0),
            fmt(r["python_start_ms"], 0),
        )
        for r in rows_in
    ]
    headers = (
        "jobs in store",
        "ok",
        "build s",
        "claim+finish /s",
        "finish&claim /s",
        "Client.list ms",
        "clobi ls ms",
        "python start ms",
    )
    notes = [
        "claim+finish: two durable transactions per job; finish&claim: the agent's pattern, "
        "one transaction reports a job and claims the next. Medians for the listings."
    ]
    return Section("W4 scale: claims and listings in a big store", headers, rows, notes)


def sandbox_section(report: dict[str, Any]) -> Section | None:
    r = report["workloads"].get("W5")
    if not r:
        return None
    row = (
        fmt(r["jobs"]),
        _ok(r),
        fmt(r["mib"]),
        fmt(r["seconds"], 2),
        fmt(r["mib_s"]),
        fmt(r["cp_mib_s"]),
        fmt(r["mib_s"] / r["cp_mib_s"], 2),
    )
    headers = ("jobs", "ok", "MiB moved", "seconds", "Clobi MiB/s", "cp MiB/s", "÷ cp")
    notes = ["10 MiB in + 10 MiB out per job; cp does not fsync, Clobi's sandbox store does."]
    return Section("W5 sandboxes: 10 MiB in, 10 MiB out", headers, [row], notes)


def listing_section(report: dict[str, Any]) -> Section | None:
    rows_in = [r for r in report["workloads"].get("W6") or [] if not r.get("error")]
    failed = [r for r in report["workloads"].get("W6") or [] if r.get("error")]
    if not rows_in and not failed:
        return None
    names = [q["request"] for q in rows_in[0]["requests"]] if rows_in else []
    rows: list[Row] = []
    for k, name in enumerate(names):
        first = rows_in[0]["requests"][k]
        row = [name, first["as"], fmt(first["jobs"])]
        for r in rows_in:
            q = r["requests"][k]
            row += [fmt(q["p50_ms"], 1), fmt(q["p95_ms"], 1)]
        rows.append(tuple(row))
    engines = [r["config"].split(" ")[0] for r in rows_in]
    headers = ("request", "token", "jobs")
    for engine in engines:
        headers += (f"{engine} p50 ms", f"{engine} p95 ms")
    notes = [
        "GET /api/v1/jobs through clobi server with a bearer token, one kept-alive connection, "
        "50 jobs a page, newest first unless sorted otherwise; every request once per round; "
        "'page 3 (cursor)' times the third page, asked with the cursor of the second.",
        *[
            f"{r['config']}: {r['jobs']:,} jobs built in {r['build_s']:.0f} s "
            f"({', '.join(f'{s} {n:,}' for s, n in r['states'].items() if n)}); "
            f"server CPU {r['server_cpu_ms_per_request']:.1f} ms per request"
            for r in rows_in
        ],
        *[f"{r['config']}: {r['error']}" for r in failed],
    ]
    title = "W6 jobs page: filtered pages of a big session through the server"
    return Section(title, headers, rows, notes)


def target_section(report: dict[str, Any]) -> Section:
    rows: list[Row] = [
        (t.name, t.goal, t.value, _verdict(t.met), _factor(t.factor))
        for t in targets.evaluate(report)
    ]
    notes = [
        "factor: measured ÷ goal for 'at least' goals, goal ÷ measured for 'at most' goals; "
        "≥ 1 is met, 0.5 is half way there."
    ]
    return Section("Targets", ("target", "goal", "measured", "", "factor"), rows, notes)


def _factor(f: float | None) -> str:
    if f is None:
        return "–"
    return f"{f:,.0f}×" if f >= 10 else f"{f:.2f}×"


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "–"}[met]


def runtime_section(report: dict[str, Any]) -> Section:
    others = report.get("others_cpu", {})
    rows: list[Row] = [
        (k, fmt(v, 1), f"{others[k]:.0%}" if k in others else "–")
        for k, v in report["runtimes_s"].items()
    ]
    notes = [
        "others' CPU: share of all cores used by processes outside this run (including Redis) "
        "while the workload ran; anything above a few % makes that workload's figures low.",
        *report["problems"],
    ]
    return Section("Runtime per workload", ("workload", "seconds", "others' CPU"), rows, notes)


def sections(report: dict[str, Any]) -> list[Section]:
    found = [
        machine_section(report),
        drain_section(report),
        latency_section(report),
        submit_section(report),
        scale_section(report),
        sandbox_section(report),
        listing_section(report),
        target_section(report),
        runtime_section(report),
    ]
    return [s for s in found if s is not None]


# --- rendering --------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    out: list[str] = []
    for s in sections(report):
        out += [f"#### {s.title}", "", "| " + " | ".join(s.headers) + " |"]
        out.append("|" + "|".join("---" for _ in s.headers) + "|")
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in s.rows]
        out += [""] + [f"- {n}" for n in s.notes] + ([""] if s.notes else [])
    return "\n".join(out)


def plain(report: dict[str, Any]) -> str:
    out: list[str] = []
    for s in sections(report):
        widths = [max(len(str(c)) for c in col) for col in zip(s.headers, *s.rows, strict=True)]
        out += ["", s.title, "  ".join(h.ljust(w) for h, w in zip(s.headers, widths, strict=True))]
        out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in s.rows]
        out += [f"  * {n}" for n in s.notes]
    return "\n".join(out)


def show(report: dict[str, Any]) -> None:
    """Print the tables on the terminal."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(plain(report))
        return
    console = Console()
    for s in sections(report):
        table = Table(title=s.title, title_justify="left", show_header=any(s.headers))
        for h in s.headers:
            table.add_column(h, overflow="fold")
        for row in s.rows:
            table.add_row(*row)
        console.print(table)
        for n in s.notes:
            console.print(f"  • {n}", style="dim", highlight=False)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report")
    parser.add_argument("path", nargs="?", default=Path(__file__).parent / "results/latest.json")
    parser.add_argument("--markdown", action="store_true", help="Markdown tables for the docs")
    args = parser.parse_args()
    report = json.loads(Path(args.path).read_text())
    if args.markdown:
        print(markdown(report))
    else:
        show(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
