"""The table, the JSON file and the generated section of BENCHMARKS.md."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ("against_previous", "machine", "sql_text", "table", "targets_table", "write_json", "update_markdown")

START = "<!-- bench:results:start -->"
END = "<!-- bench:results:end -->"


def machine(db_versions: dict[str, str]) -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    try:
        wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("Copyright")[0].strip()
    except OSError:
        wrk = "not installed"
    versions = {name: metadata.version(name) for name in ("litestar", "granian", "sqlalchemy", "asyncpg", "aiosqlite", "msgspec")}
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "load_average_at_end": os.getloadavg(),
        "python": platform.python_version(),
        "databases": db_versions,
        "wrk": wrk,
        "packages": versions,
    }


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def sql_text(sql: dict[str, float] | None) -> str:
    """Statements per request, with the idempotency key's own apart: ``4.00 +6.00 key``."""
    if not sql:
        return "–"
    text = f"{sql['statements']:.2f}"
    if sql.get("idempotency"):
        text += f" +{sql['idempotency']:.2f} key"
    return text


def table(results: list[dict[str, Any]]) -> str:
    """One Markdown table; also what is printed."""
    head = ("| db | scenario | conns | req/s | yardstick | % of it | p50 ms (× it) | p99 ms (× it) | its req/s | "
            "SQL/req under load (alone) | answers | CPU ms/req server + db | wrk cpu | check |")
    lines = [head, "|---|---|--:|--:|---|--:|--:|--:|--:|--:|---|--:|--:|---|"]
    for r in results:
        if r.get("kind") != "http":
            continue
        bare = r.get("bare") or {}
        ratio = f"{r['rps'] / bare['rps'] * 100:.1f}%" if bare.get("rps") else "–"
        p50 = f"{_ms(r['p50_ms'])} (×{r['p50_ms'] / bare['p50_ms']:.1f})" if bare.get("p50_ms") else _ms(r["p50_ms"])
        p99 = f"{_ms(r['p99_ms'])} (×{r['p99_ms'] / bare['p99_ms']:.1f})" if bare.get("p99_ms") else _ms(r["p99_ms"])
        answers = " ".join(f"{k}:{v}" for k, v in sorted(r["statuses"].items()))
        errors = {k: v for k, v in r.get("socket_errors", {}).items() if v}
        if errors:
            answers += " " + " ".join(f"{k}-err:{v}" for k, v in errors.items())
        bare_rps = f"{bare['rps']:,.0f}" if bare.get("rps") else "–"
        yardstick = bare.get("name", "bare").rsplit(" c", 1)[0] if bare else "–"
        check = "ok" if not r["problems"] else "FAIL: " + "; ".join(r["problems"])[:200]
        extra = r.get("extra") or {}
        cpu = (f"{extra['server_cpu_ms']:.2f} + {extra['db_cpu_ms']:.2f}" if "server_cpu_ms" in extra else "–")
        if r["db"] == "sqlite" and "server_cpu_ms" in extra:
            cpu = f"{extra['server_cpu_ms']:.2f}"  # SQLite runs inside the server
        sql = sql_text(extra.get("sql"))
        if r.get("sql_alone"):
            sql += f" ({sql_text(r['sql_alone'])})"
        lines.append(f"| {r['db']} | {r['scenario']} | {r['connections']} | {r['rps']:,.0f} | {yardstick} | {ratio} | "
                     f"{p50} | {p99} | {bare_rps} | {sql} | {answers} | {cpu} | {r['wrk_cpu']:.2f} | {check} |")
    return "\n".join(lines)


def targets_table(results: list[dict[str, Any]]) -> str:
    """The targets of issue 19 against this run's figures (empty when no page scenario ran)."""
    rows = [r for r in results if r.get("kind") == "target"]
    if not rows:
        return ""
    lines = ["| db | path | measured | against | target | met | from |", "|---|---|--:|---|--:|---|---|"]
    for r in rows:
        note = f"; {r['note']}" if r.get("note") else ""
        lines.append(f"| {r['db']} | {r['what']} | {r['value']} | {r['versus']} | {r['target']} | "
                     f"{'yes' if r['met'] else '**no**'} | {r['measured']}{note} |")
    return "\n".join(lines)


def against_previous(path: Path, results: list[dict[str, Any]], args: dict[str, Any]) -> str:
    """The API rows' share of their yardstick against the run before (the ``results.json`` this run
    replaces): the API should not lose more than the run-to-run noise while the pages change. The
    share, not the rate: the machine is shared, and the yardstick moves with it."""
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    kept = ("quick", "duration", "workers", "connections", "hot_connections")
    if any((before.get("args") or {}).get(k) != args.get(k) for k in kept):
        return ""  # a run of another kind
    old = {(r["db"], r["scenario"]): r for r in before.get("results", []) if r.get("kind") == "http"}
    parts = []
    for r in results:
        if r.get("kind") != "http" or r["scenario"].startswith(("page ", "bare ")):
            continue
        was = old.get((r["db"], r["scenario"]))
        if was is None or not (r.get("bare") or {}).get("rps") or not (was.get("bare") or {}).get("rps"):
            continue
        now_share, old_share = r["rps"] / r["bare"]["rps"] * 100, was["rps"] / was["bare"]["rps"] * 100
        parts.append(f"{r['db']} {r['scenario']} {old_share:.1f}% → {now_share:.1f}%")
    if not parts:
        return ""
    date = (before.get("machine") or {}).get("date", "?")
    return f"API rows against the run of {date} (share of their yardstick): " + "; ".join(parts) + "."


def inproc_lines(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        if r.get("kind") == "qr":
            q = r["figures"]
            lines.append(
                f"- **QR** (in-process, service/qr.py, fixed mask): PNG {q['png']['per_second']:.0f}/s "
                f"(p50 {q['png']['p50_ms']:.1f} ms), SVG {q['svg']['per_second']:.0f}/s (p50 {q['svg']['p50_ms']:.1f} ms); "
                f"qrcode's default (all eight masks scored) PNG {q['png_all_eight_masks']['per_second']:.0f}/s, so the fixed "
                f"mask is ×{q['fixed_mask_speedup']:.1f}. Serving the same QR twice: first {q['first_serve_ms']:.1f} ms, "
                f"second {q['second_serve_us']:.1f} µs (lru_cache).")
        elif r.get("kind") == "site":
            s = r["figures"]
            if "skipped" in s:
                lines.append(f"- **Site**: skipped: {s['skipped']}.")
            else:
                lines.append(f"- **Site** (service.sitegen.build_site, {s['providers']} providers, {s['places']} places, "
                             f"{s['pages']} pages): {s['seconds']:.1f} s.")
        elif r.get("kind") == "note":
            lines.append(f"- {r['text']}")
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def update_markdown(path: Path, payload: dict[str, Any], command: str) -> None:
    """Rewrite only the generated section of BENCHMARKS.md; the rest is written by hand."""
    m = payload["machine"]
    dbs = ", ".join(m["databases"].values())
    section = "\n".join([
        START,
        f"_Generated by `{command}` on {m['date']}; do not edit by hand._",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['memory_gib']} GiB, load average at the end of the run "
        f"{', '.join(f'{x:.1f}' for x in m['load_average_at_end'])} (shared with other work); Python {m['python']}; "
        f"{dbs}; {m['wrk']}; " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()) + ".",
        f"Server: `vouchers serve --workers {payload['args']['workers']}` (granian, ASGI); load: wrk, "
        f"{payload['args']['wrk_threads']} thread, one run of {payload['args']['duration']} s per timed scenario.",
        "",
        table(payload["results"]),
        "",
        targets_table(payload["results"]),
        "",
        inproc_lines(payload["results"]),
        END,
    ])
    text = path.read_text() if path.exists() else "# Benchmarks\n\n## Latest run\n\n" + START + "\n" + END + "\n"
    if START in text and END in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: section, text, flags=re.S)
    else:
        text += "\n## Latest run\n\n" + section + "\n"
    path.write_text(text)
