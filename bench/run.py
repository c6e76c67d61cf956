"""The run: per database a fresh database, the bare yardstick, then each scenario against the
real server, with the checks after each."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from . import data, inproc, report, site_build
from .cpu import cpu_seconds, group_cpu_seconds
from .profile import Profiler, summarise
from .servers import ROOT, bare_server, service_server
from .wrk import LoadResult, require_wrk, run_wrk

__all__ = ("SCENARIOS", "main")

SCENARIOS = ("rush", "scan", "redeem", "qr", "site")
BARE_POST_BODY = '{"amount_cents":100,"category":"coaching","reference":"bench-{n}"}'


PACED_SHARE = 0.25
"""The paced runs send at this share of the throughput measured at saturation: well within what
the server keeps up with, so latency is the time a request takes rather than a queue's length."""


def _paced_rate(saturated_rps: float) -> float:
    return max(10.0, round(saturated_rps * PACED_SHARE, -1))


def say(text: str) -> None:
    print(text, flush=True)


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = (ROOT / args.out).resolve()
        self.work = self.out / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.results: list[dict[str, Any]] = []
        self.db_versions: dict[str, str] = {}
        # The 1,000-voucher runs the scale runs are compared with, and the fixed rates of the
        # paced runs (a share of those runs' throughput).
        self.small: dict[str, LoadResult] = {}
        self.rates: dict[str, float] = {}
        q = args.quick
        self.pool = 50 if q else 1000
        self.hot = 10
        self.rush_applicants = 200 if q else 10_000
        self.rush_cap = 10 if q else 300
        self.warmup = 0.3 if q else 1.0

    # --- helpers ---------------------------------------------------------------------------

    def record(self, db: str, scenario: str, load: LoadResult, bare: LoadResult | None, problems: list[str],
               **extra: Any) -> dict[str, Any]:
        if load.server_errors:
            problems = [f"{load.server_errors} answers 5xx", *problems]
        if load.sent != load.received:
            problems = [f"{load.sent - load.received} requests unanswered", *problems]
        row = {"kind": "http", "db": db, "scenario": scenario, **load.as_dict(), "problems": problems,
               "bare": None if bare is None else {"rps": bare.rps, "p50_ms": bare.p50_ms, "p99_ms": bare.p99_ms,
                                                  "connections": bare.connections}, **extra}
        self.results.append(row)
        ratio = f"{load.rps / bare.rps * 100:.1f}% of bare" if bare and bare.rps else ""
        status = "ok" if not problems else "FAIL " + "; ".join(problems)
        cpu = load.extra.get("server_cpu_ms")
        cpu_text = f"  cpu/req: server {cpu:.2f} ms, db {load.extra['db_cpu_ms']:.2f} ms" if cpu is not None else ""
        say(f"  {scenario:<14} {load.rps:9,.0f} req/s  p50 {load.p50_ms:6.1f} ms  p99 {load.p99_ms:6.1f} ms  "
            f"{ratio:>16}  {dict(sorted(load.statuses.items()))}  wrk cpu {load.wrk_cpu:.2f}{cpu_text}  {status}")
        return row

    def wrk(self, url: str, **kw: Any) -> LoadResult:
        """Run wrk, and measure the CPU time the server and PostgreSQL spent meanwhile."""
        kw.setdefault("threads", self.args.wrk_threads)
        server = f"--port {url.rsplit(':', 1)[1]}"
        before = group_cpu_seconds(server), cpu_seconds("postgres:")
        load = run_wrk(url, **kw)
        after = group_cpu_seconds(server), cpu_seconds("postgres:")
        if load.requests:
            load.extra["server_cpu_ms"] = round((after[0] - before[0]) * 1000 / load.requests, 3)
            load.extra["db_cpu_ms"] = round((after[1] - before[1]) * 1000 / load.requests, 3)
        return load

    # --- the yardstick ------------------------------------------------------------------------

    def measure_bare(self, db: str, conns: set[int], posts: set[int]) -> dict[tuple[str, int], LoadResult]:
        say(f"[{db}] bare Litestar endpoint, {self.args.workers} workers")
        found: dict[tuple[str, int], LoadResult] = {}
        d = self.args.duration
        with bare_server(self.args.workers, self.out / "logs" / "bare.log") as srv:
            self.wrk(srv.url, path="/bare", seconds=self.warmup, connections=max(conns | posts))
            for c in sorted(conns):
                found[("GET", c)] = r = self.wrk(srv.url, path="/bare", seconds=d, connections=c)
                self.record(db, f"bare GET c{c}", r, None, [])
            for c in sorted(posts):
                found[("POST", c)] = r = self.wrk(srv.url, path="/bare", body=BARE_POST_BODY, seconds=d, connections=c)
                self.record(db, f"bare POST c{c}", r, None, [])
        return found

    # --- one database -------------------------------------------------------------------------

    def run_db(self, db: str) -> None:
        args = self.args
        http = [s for s in ("rush", "scan", "redeem") if s in args.scenarios]
        scale = args.scale and db == "postgres"
        if not http and not scale:
            return
        say(f"[{db}] fresh database, migrations, {self.pool + self.hot} vouchers via the domain functions")
        url = data.prepare_database(db, self.work)
        env = data.server_env(url, self.work)
        data.migrate(env)
        fx = asyncio.run(data.setup_data(env, self.work, pool=self.pool, hot=self.hot, rush_cap=self.rush_cap,
                             rush_applicants=self.rush_applicants)) if http else None
        self.db_versions[db] = data.database_version(env)
        c, hot_c = args.connections, args.hot_connections
        gets = {c} if ("scan" in http or scale) else set()
        posts = ({c} if ({"rush", "redeem"} & set(http) or scale) else set()) | ({hot_c} if "redeem" in http else set())
        bare = self.measure_bare(db, gets, posts)
        with service_server(env, args.workers, self.out / "logs" / f"server-{db}.log") as srv:
            say(f"[{db}] vouchers serve --workers {args.workers} on {srv.url}")
            if fx is not None:
                # Warm the server (compiled statements, connections) with a few lookups.
                self.wrk(srv.url, path="/api/v1/vouchers/{item}", items_file=fx.spread_codes, token=fx.coach_token,
                         seconds=self.warmup, connections=min(c, 16))
                if "rush" in http:
                    self.rush(db, srv, env, fx, bare[("POST", c)])
                    self.drain(db, env, "rush")
                if "scan" in http:
                    self.small["scan"] = self.scan(db, srv, fx.spread_codes, fx.coach_token, bare[("GET", c)], "scan")
                if "redeem" in http:
                    self.small["redeem"] = self.redeem(db, srv, env, fx, fx.spread_ids, fx.spread_codes, c,
                                                       bare[("POST", c)], "redeem")
                    self.drain(db, env, "redeem")
                    self.redeem(db, srv, env, fx, fx.spread_ids, fx.spread_codes, c, bare[("POST", c)],
                                f"redeem {len(fx.provider_ids)} providers", providers=True)
                    self.drain(db, env, f"redeem {len(fx.provider_ids)} providers")
                    self.redeem(db, srv, env, fx, fx.hot_ids, fx.hot_codes, hot_c, bare[("POST", hot_c)],
                                "redeem hot-10")
                    self.drain(db, env, "redeem hot-10")
                if scale and {"scan", "redeem"} <= set(http):
                    # The 1,000-voucher side of the scale comparison at a fixed rate.
                    self.rates = {kind: _paced_rate(self.small[kind].rps) for kind in ("scan", "redeem")}
                    self.small |= self.steady(db, srv, env, fx, bare, "")
        if scale:
            self.scale(db, env, bare)

    def drain(self, db: str, env: dict[str, str], after: str, *, limit: float = 300.0) -> None:
        """Wait until the server has sent every mail and sealed every audit entry the scenario
        caused, so the next one is measured on its own; report how long that took (on opening
        day: how long until the last applicant has their mail)."""
        started = time.monotonic()
        mails, unsealed = data.backlog(env)
        first = (mails, unsealed)
        while (mails or unsealed) and time.monotonic() - started < limit:
            time.sleep(0.5)
            mails, unsealed = data.backlog(env)
        seconds = time.monotonic() - started
        text = (f"After *{after}* ({db}): {first[0]:,} mails still to send and {first[1]:,} audit entries to "
                f"seal when the last answer came; done {seconds:.1f} s later.")
        if mails or unsealed:
            text = f"After *{after}* ({db}): {mails:,} mails and {unsealed:,} audit entries still waiting after {limit:.0f} s."
        self.results.append({"kind": "note", "text": text})
        say(f"  backlog after {after}: {first[0]:,} mails, {first[1]:,} audit entries; cleared in {seconds:.1f} s")

    def rush(self, db: str, srv: Any, env: dict[str, str], fx: data.Fixture, bare: LoadResult) -> None:
        n = self.rush_applicants
        profiler = self.profiler(srv, db, "rush")
        # Bounded by count (each applicant once); the time bound is only a safety net.
        load = self.wrk(srv.url, path=f"/api/v1/admin/schemes/{fx.rush_slug}/applications", body=data.RUSH_BODY,
                        items_file=fx.rush_kvks, limit=n, seconds=max(120.0, n / 8), token=fx.admin_token,
                        connections=self.args.connections)
        self.finish_profile(profiler)
        problems = []
        if load.sent < n:
            problems.append(f"time bound reached after {load.sent} of {n} applicants (under {n / 8:.0f} s)")
        if load.count(201) != n:
            problems.append(f"{load.count(201)} of {n} applications answered 201")
        problems += data.rush_check(env, fx.rush_slug, cap=self.rush_cap, applicants=n)
        problems += [f"reconcile: {p}" for p in data.reconcile(env)[:5]]
        self.record(db, f"rush {n}→{self.rush_cap}", load, bare, problems)

    def scan(self, db: str, srv: Any, codes: Path, token: str, bare: LoadResult, name: str, *,
             rate: float = 0.0) -> LoadResult:
        profiler = self.profiler(srv, db, name) if not rate else None
        load = self.wrk(srv.url, path="/api/v1/vouchers/{item}", items_file=codes, token=token,
                        seconds=self.args.duration, connections=self.args.connections, rate=rate)
        self.finish_profile(profiler)
        problems = [] if load.count(200) == load.requests else [f"{load.requests - load.count(200)} answers not 200"]
        self.record(db, name, load, bare, problems)
        return load

    def redeem(self, db: str, srv: Any, env: dict[str, str], fx: data.Fixture, ids: list[int], codes: Path,
               conns: int, bare: LoadResult, name: str, *, full_reconcile: bool = True, providers: bool = False,
               rate: float = 0.0) -> LoadResult:
        """Redemptions by the first provider's coach, or (``providers``) by a coach of each
        provider in turn; as fast as they are answered, or at ``rate`` a second."""
        provider_ids = fx.provider_ids if providers else [fx.provider_id]
        before = data.money_snapshot(env, ids, provider_ids)
        profiled = not rate and (name == "redeem" or name.startswith("scale redeem"))
        profiler = self.profiler(srv, db, name) if profiled else None
        load = self.wrk(srv.url, path="/api/v1/vouchers/{item}/redemptions", body=data.REDEEM_BODY, items_file=codes,
                        token=f"@{fx.coach_tokens}" if providers else fx.coach_token, seconds=self.args.duration,
                        connections=conns, rate=rate)
        self.finish_profile(profiler)
        after = data.money_snapshot(env, ids, provider_ids)
        ok = load.count(201)
        amount = ok * data.REDEEM_AMOUNT
        problems = [] if ok == load.requests else [f"{load.requests - ok} answers not 201"]
        if before["balance"] - after["balance"] != amount:
            problems.append(f"balances fell by {before['balance'] - after['balance']}, 201 answers × amount = {amount}")
        if after["redeemed"] - before["redeemed"] != amount or after["provider"] - before["provider"] != amount:
            problems.append("redeemed or provider figures do not match the 201 answers")
        if after["redemptions"] - before["redemptions"] != ok:
            problems.append(f"{after['redemptions'] - before['redemptions']} redemptions stored, {ok} answered 201")
        if full_reconcile:
            problems += [f"reconcile: {p}" for p in data.reconcile(env)[:5]]
        self.record(db, name, load, bare, problems, redeemed_cents=amount, vouchers=len(ids))
        return load

    # --- profiling -------------------------------------------------------------------------------

    def profiler(self, srv: Any, db: str, name: str) -> tuple[Profiler, Path, str] | None:
        if not self.args.profile:
            return None
        raw = self.out / f"profile-{db}-{name.replace(' ', '-')}.raw"
        return Profiler(srv.pid, self.args.duration, raw), raw, f"{db} {name}"

    def finish_profile(self, profiler: tuple[Profiler, Path, str] | None) -> None:
        if profiler is None:
            return
        prof, raw, label = profiler
        err = prof.wait()
        if not raw.exists():
            say(f"  py-spy wrote nothing: {err[-500:]}")
            return
        text = summarise(raw)
        summary = raw.with_suffix(".txt")
        summary.write_text(f"{label}\n\n{text}\n")
        say(f"  profile of {label}: {summary.relative_to(ROOT) if summary.is_relative_to(ROOT) else summary}")

    # --- scale -----------------------------------------------------------------------------------

    def scale(self, db: str, env: dict[str, str], bare: dict[tuple[str, int], LoadResult]) -> None:
        from . import scale

        n = self.args.scale_vouchers
        say(f"[{db}] scale: loading {n:,} vouchers with COPY")
        started = time.monotonic()
        fx = scale.load(env, self.work, n)
        self.results.append({"kind": "note", "text": f"Scale ({db}): loaded {n:,} vouchers (applications, vouchers, "
                                                     f"ledger entries) with COPY in {time.monotonic() - started:.0f} s."})
        c = self.args.connections
        with service_server(env, self.args.workers, self.out / "logs" / f"server-{db}-scale.log") as srv:
            self.wrk(srv.url, path="/api/v1/vouchers/{item}", items_file=fx.spread_codes, token=fx.coach_token,
                     seconds=self.warmup, connections=min(c, 16))
            large = {"scan": self.scan(db, srv, fx.spread_codes, fx.coach_token, bare[("GET", c)],
                                       f"scale scan {n // 1000}k"),
                     "redeem": self.redeem(db, srv, env, fx, fx.spread_ids, fx.spread_codes, c, bare[("POST", c)],
                                           f"scale redeem {n // 1000}k", full_reconcile=False)}
            self.drain(db, env, f"scale redeem {n // 1000}k")
            if self.rates:
                large |= self.steady(db, srv, env, fx, bare, f"scale {n // 1000}k ", full_reconcile=False)
        self.compare_scale(db, n, large)
        problems = scale.set_based_check(env)
        started = time.monotonic()
        problems += [f"reconcile: {p}" for p in data.reconcile(env)[:5]]
        took = time.monotonic() - started
        self.results.append({"kind": "note", "text": (
            f"Scale ({db}) books after the runs, checked with set-based SQL (voucher balances and provider "
            f"figures = ledger, scheme figures = voucher sums, amounts add up to each value) and with "
            f"`service.check.reconcile` (what `vouchers check` runs; {took:.1f} s at this size): "
            f"{'clean' if not problems else '; '.join(problems)}.")})
        if problems:
            self.failed_checks.extend(problems)

    def steady(self, db: str, srv: Any, env: dict[str, str], fx: Any, bare: dict[tuple[str, int], LoadResult],
               prefix: str, *, full_reconcile: bool = True) -> dict[str, LoadResult]:
        """Scan and redeem at the fixed rates of ``self.rates``: the latency of a server that keeps
        up, which a run at saturation cannot show (there, latency is connections / throughput)."""
        c = self.args.connections
        scan_rate, redeem_rate = self.rates["scan"], self.rates["redeem"]
        found = {"scan paced": self.scan(db, srv, fx.spread_codes, fx.coach_token, bare[("GET", c)],
                                         f"{prefix}scan at {scan_rate:,.0f}/s", rate=scan_rate)}
        name = f"{prefix}redeem at {redeem_rate:,.0f}/s"
        found["redeem paced"] = self.redeem(db, srv, env, fx, fx.spread_ids, fx.spread_codes, c, bare[("POST", c)],
                                            name, full_reconcile=full_reconcile, rate=redeem_rate)
        self.drain(db, env, name)
        return found

    def compare_scale(self, db: str, n: int, large: dict[str, LoadResult]) -> None:
        """A note comparing the latency at 1,000 and at ``n`` vouchers, run by run."""
        parts = []
        for kind in ("scan", "redeem", "scan paced", "redeem paced"):
            small, big = self.small.get(kind), large.get(kind)
            if small is None or big is None:
                continue
            how = (f"at {big.rate:,.0f}/s" if big.rate else "at saturation")
            change = [f"{label} {a:.1f} → {b:.1f} ms ({(b - a) / a * 100:+.0f}%)" if a else f"{label} {b:.1f} ms"
                      for label, a, b in (("p50", small.p50_ms, big.p50_ms), ("p99", small.p99_ms, big.p99_ms))]
            late = f"; late sends {small.late} and {big.late}" if big.rate else ""
            parts.append(f"{kind.split()[0]} {how}: {', '.join(change)}{late}")
        if parts:
            self.results.append({"kind": "note", "text": f"Scale ({db}), 1,000 → {n:,} vouchers: " + "; ".join(parts)
                                 + "."})

    failed_checks: list[str] = []

    # --- the whole run ---------------------------------------------------------------------------

    def go(self) -> int:
        args = self.args
        if {"rush", "scan", "redeem"} & set(args.scenarios) or args.scale:
            require_wrk()
        dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
        if args.scale and "postgres" not in dbs:
            dbs.append("postgres")
        for db in dbs:
            self.run_db(db)
        if "qr" in args.scenarios:
            say("[in-process] QR renders")
            self.results.append({"kind": "qr", "figures": inproc.measure_qr(min(args.duration, 10.0))})
        if "site" in args.scenarios:
            say("[in-process] site build")
            self.results.append({"kind": "site", "figures": inproc.measure_site()})
            self.results += site_build.results(quick=args.quick)
        command = "python -m bench " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "make bench"
        payload = {"machine": report.machine(self.db_versions), "args": vars(args), "results": self.results}
        report.write_json(self.out / "results.json", payload)
        print()
        print(report.table(self.results))
        print(report.inproc_lines(self.results))
        if not args.no_markdown:
            report.update_markdown(ROOT / "BENCHMARKS.md", payload, command)
            say("\nBENCHMARKS.md updated")
        say(f"figures: {self.out / 'results.json'}")
        failures = [r for r in self.results if r.get("problems")] or self.failed_checks
        if failures:
            say(f"{len(failures)} scenario(s) failed their checks")
            return 1
        return 0


def main(args: argparse.Namespace) -> int:
    return Run(args).go()
