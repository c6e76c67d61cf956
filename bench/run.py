"""The run: per database a fresh database, the yardsticks, then each scenario against the real
server, with the checks after each, the SQL statements each request cost, and the ratios the
issue's targets are about."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shlex
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

from . import browser, data, inproc, report, site_build, sqlcount
from .browser import Browser, Request
from .cpu import cpu_by_process, cpu_used, group_cpu_by_process
from .profile import Profiler, summarise
from .servers import ROOT, bare_server, service_server
from .wrk import LoadResult, require_wrk, run_wrk

__all__ = ("SCENARIOS", "main")

SCENARIOS = ("rush", "page-rush", "scan", "page-scan", "redeem", "page-redeem", "qr", "site")
HTTP_SCENARIOS = SCENARIOS[:6]
BARE_POST_BODY = '{"amount_cents":100,"category":"coaching","reference":"bench-{n}"}'
FORM = "application/x-www-form-urlencoded"
BARE_FORM_BODY = "amount=0%2C10&category=coaching&reference=bench-{n}&key=k{n}"
# The application form as the browser sends it ({1}: the KvK number of the line; the CSRF token is added).
APPLY_FORM = ("kvk_number={1}&company_name=Bench+Page+BV+{1}&employees=3&postcode=6811+AB&contact_name=Jan+Bench"
              "&email=p{1}%40example.org&purpose=Coaching+voor+de+zaak")


PACED_SHARE = 0.25
"""The paced runs send at this share of the throughput measured at saturation: well within what
the server keeps up with, so latency is the time a request takes rather than a queue's length."""


def _paced_rate(saturated_rps: float) -> float:
    return max(10.0, round(saturated_rps * PACED_SHARE, -1))


def say(text: str) -> None:
    print(text, flush=True)


def per_request(counts: sqlcount.Counts, n: int) -> dict[str, float] | None:
    if not n:
        return None
    return {"statements": counts.statements / n, "control": counts.control / n, "idempotency": counts.idempotency / n}


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
        self.rush_applicants = args.rush_applicants or (200 if q else 10_000)
        self.rush_cap = 10 if q else 300
        self.warmup = 0.3 if q else 1.0
        self.alone_count = 5 if q else 20
        """Requests sent one at a time after (or within) a scenario, for the statements a request costs alone."""
        self.count_dir: Path | None = None
        """Where the running server's web processes count their SQL statements."""
        self.db = ""
        self.run_tag = secrets.token_hex(3)
        self._tags = 0

    def tag(self) -> str:
        """A prefix unique in this run, for the form's idempotency keys and references."""
        self._tags += 1
        return f"{self.run_tag}-{self._tags}"

    # --- helpers ---------------------------------------------------------------------------

    def record(self, db: str, scenario: str, load: LoadResult, bare: LoadResult | None, problems: list[str],
               **extra: Any) -> dict[str, Any]:
        if load.server_errors:
            problems = [f"{load.server_errors} answers 5xx", *problems]
        if load.sent != load.received:
            problems = [f"{load.sent - load.received} requests unanswered", *problems]
        row = {"kind": "http", "db": db, "scenario": scenario, **load.as_dict(), "problems": problems,
               "bare": None if bare is None else {"name": bare.extra.get("name", "bare"), "rps": bare.rps,
                                                  "p50_ms": bare.p50_ms, "p99_ms": bare.p99_ms,
                                                  "connections": bare.connections}, **extra}
        self.results.append(row)
        ratio = f"{load.rps / bare.rps * 100:.1f}% of {bare.extra.get('name', 'bare').split(' c')[0]}" \
            if bare and bare.rps else ""
        status = "ok" if not problems else "FAIL " + "; ".join(problems)
        cpu = load.extra.get("server_cpu_ms")
        cpu_text = f"  cpu/req: server {cpu:.2f} ms, db {load.extra['db_cpu_ms']:.2f} ms" if cpu is not None else ""
        sql = load.extra.get("sql")
        sql_text = ""
        if sql is not None:
            sql_text = f"  SQL/req {report.sql_text(sql)}"
            if extra.get("sql_alone"):
                sql_text += f" (alone {report.sql_text(extra['sql_alone'])})"
        say(f"  {scenario:<18} {load.rps:9,.0f} req/s  p50 {load.p50_ms:6.1f} ms  p99 {load.p99_ms:6.1f} ms  "
            f"{ratio:>22}  {dict(sorted(load.statuses.items()))}{sql_text}  wrk cpu {load.wrk_cpu:.2f}{cpu_text}  "
            f"{status}")
        return row

    def sql(self) -> sqlcount.Counts:
        return sqlcount.read(self.count_dir) if self.count_dir is not None else sqlcount.Counts()

    def wrk(self, url: str, **kw: Any) -> LoadResult:
        """Run wrk, and measure the CPU time the server and PostgreSQL spent meanwhile, and the
        statements the server's web processes sent."""
        kw.setdefault("threads", self.args.wrk_threads)
        server = f"--port {url.rsplit(':', 1)[1]}"
        # PostgreSQL's backends of this run's database: the server may be shared with other work.
        database = f" {data.PG_DATABASE} "
        before = group_cpu_by_process(server), cpu_by_process("postgres:", database), self.sql()
        load = run_wrk(url, **kw)
        after = group_cpu_by_process(server), cpu_by_process("postgres:", database), self.sql()
        if load.requests:
            load.extra["server_cpu_ms"] = round(cpu_used(before[0], after[0]) * 1000 / load.requests, 3)
            load.extra["db_cpu_ms"] = round(cpu_used(before[1], after[1]) * 1000 / load.requests, 3)
            if self.count_dir is not None:
                counts = after[2] - before[2]
                load.extra["sql"] = per_request(counts, load.requests)
                load.extra["sql_counts"] = vars(counts)
        return load

    def alone(self, srv: Any, requests: list[Request], expect: int,
              name: str = "") -> tuple[dict[str, float] | None, list[str]]:
        """Send ``requests`` one at a time: the statements each cost with nothing else going on
        (nothing shares a group), and a problem unless every answer is ``expect``. With
        ``--sql-log``, the text of the statements of the first of them goes to
        ``<out>/sql/<db>-<name>.sql``."""
        before = self.sql()
        logged = sqlcount.log_offsets(self.count_dir) if self.args.sql_log and self.count_dir else None
        statuses = browser.one_at_a_time(srv.url, requests[:1])
        if logged is not None and self.count_dir is not None and name:
            target = self.out / "sql" / f"{self.db}-{name.replace(' ', '-').replace('→', '-')}.sql"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f"-- {requests[0].method} {requests[0].path}, one request alone\n"
                              + sqlcount.log_since(self.count_dir, logged))
            say(f"  statements of one {name} request: {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}")
        statuses += browser.one_at_a_time(srv.url, requests[1:])
        counts = self.sql() - before
        wrong = {s: n for s, n in Counter(statuses).items() if s != expect}
        problems = [f"one at a time: answers {wrong}, expected {expect}"] if wrong else []
        return (per_request(counts, len(requests)) if self.count_dir is not None else None), problems

    # --- the yardsticks ------------------------------------------------------------------------

    def measure_bare(self, db: str, gets: set[int], posts: set[int], pages: set[int],
                     forms: set[int]) -> dict[tuple[str, int], LoadResult]:
        say(f"[{db}] bare Litestar endpoints, {self.args.workers} workers")
        found: dict[tuple[str, int], LoadResult] = {}
        d = self.args.duration
        with bare_server(self.args.workers, self.out / "logs" / "bare.log") as srv:
            self.wrk(srv.url, path="/bare", seconds=self.warmup, connections=max(gets | posts | pages | forms))
            runs = [("GET", gets, "bare GET", {"path": "/bare"}),
                    ("POST", posts, "bare POST", {"path": "/bare", "body": BARE_POST_BODY}),
                    ("PAGE", pages, "bare page", {"path": "/bare/page"}),
                    ("FORM", forms, "bare form", {"path": "/bare/form", "body": BARE_FORM_BODY, "content_type": FORM})]
            for kind, conns, label, kw in runs:
                for c in sorted(conns):
                    found[(kind, c)] = r = self.wrk(srv.url, seconds=d, connections=c, **kw)
                    r.extra["name"] = f"{label} c{c}"
                    expect = {"GET": 200, "POST": 201, "PAGE": 200, "FORM": 303}[kind]
                    self.record(db, f"{label} c{c}", r, None,
                                [] if r.count(expect) == r.requests else [f"{r.requests - r.count(expect)} not {expect}"])
        return found

    # --- one database -------------------------------------------------------------------------

    def run_db(self, db: str) -> None:
        args = self.args
        http = [s for s in HTTP_SCENARIOS if s in args.scenarios]
        scale = args.scale and db == "postgres"
        if not http and not scale:
            return
        say(f"[{db}] fresh database, migrations, {self.pool + self.hot} vouchers via the domain functions")
        url = data.prepare_database(db, self.work)
        try:
            self._run_db(db, url, http, scale)
        finally:
            data.drop_database(db)

    def _run_db(self, db: str, url: str, http: list[str], scale: bool) -> None:
        args = self.args
        self.db = db
        env = data.server_env(url, self.work)
        data.migrate(env)
        fx = asyncio.run(data.setup_data(env, self.work, pool=self.pool, hot=self.hot, rush_cap=self.rush_cap,
                             rush_applicants=self.rush_applicants)) if http else None
        self.db_versions[db] = data.database_version(env)
        c, hot_c = args.connections, args.hot_connections
        wanted = set(http)
        gets = {c} if ("scan" in wanted or scale) else set()
        posts = ({c} if ({"rush", "redeem"} & wanted or scale) else set()) | ({hot_c} if "redeem" in wanted else set())
        pages = {c} if "page-scan" in wanted else set()
        forms = {c} if {"page-rush", "page-redeem"} & wanted else set()
        bare = self.measure_bare(db, gets, posts, pages, forms)
        self.count_dir = None if args.no_sql_count else self.work / f"sql-{db}"
        if self.count_dir is not None:
            shutil.rmtree(self.count_dir, ignore_errors=True)
        try:
            with service_server(env, args.workers, self.out / "logs" / f"server-{db}.log",
                                count_dir=self.count_dir, sql_log=args.sql_log) as srv:
                say(f"[{db}] vouchers serve --workers {args.workers} on {srv.url}")
                if fx is not None:
                    self.scenarios(db, srv, env, fx, http, bare, scale)
        finally:
            self.count_dir = None
        self.targets(db)
        if scale:
            self.scale(db, env, bare)

    def scenarios(self, db: str, srv: Any, env: dict[str, str], fx: data.Fixture, http: list[str],
                  bare: dict[tuple[str, int], LoadResult], scale: bool) -> None:
        """Each page right after its API twin, so that the two are measured as close in time as they can be."""
        c, hot_c = self.args.connections, self.args.hot_connections
        # Warm the server (compiled statements, connections) with a few lookups.
        self.wrk(srv.url, path="/api/v1/vouchers/{item}", items_file=fx.spread_codes, token=fx.coach_token,
                 seconds=self.warmup, connections=min(c, 16))
        coach = None
        if {"page-scan", "page-redeem"} & set(http):
            first_code = fx.spread_codes.read_text().split()[0]
            coach = browser.coach(srv.url, fx.coach_email, data.COACH_PASSWORD, first_code, data.COACH_ADDRESS)
            self.wrk(srv.url, path="/v/{item}", items_file=fx.spread_codes, seconds=self.warmup,
                     connections=min(c, 16), headers=self.coach_headers(coach))
        if "rush" in http:
            self.rush(db, srv, env, fx, bare[("POST", c)])
            self.drain(db, env, "rush")
        if "page-rush" in http:
            self.page_rush(db, srv, env, fx, bare[("FORM", c)])
            self.drain(db, env, "page rush")
        if "scan" in http:
            self.small["scan"] = self.scan(db, srv, fx.spread_codes, fx.coach_token, bare[("GET", c)], "scan")
        if "page-scan" in http:
            assert coach is not None
            self.scan(db, srv, fx.spread_codes, fx.coach_token, bare[("PAGE", c)], "page scan", page=coach)
        if "redeem" in http:
            self.small["redeem"] = self.redeem(db, srv, env, fx, fx.spread_ids, fx.spread_codes, c,
                                               bare[("POST", c)], "redeem")
            self.drain(db, env, "redeem")
        if "page-redeem" in http:
            assert coach is not None
            self.redeem(db, srv, env, fx, fx.spread_ids, fx.spread_codes, c, bare[("FORM", c)], "page redeem",
                        page=coach)
            self.drain(db, env, "page redeem")
        if "redeem" in http:
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

    @staticmethod
    def coach_headers(coach: Browser) -> dict[str, str]:
        return {"Cookie": coach.cookie, "X-Forwarded-For": data.COACH_ADDRESS}

    def drain(self, db: str, env: dict[str, str], after: str, *, limit: float = 300.0) -> None:
        """Wait until the server has sent every mail and sealed every audit entry the scenario
        caused, so the next one is measured on its own; report how long that took (on opening
        day: how long until the last applicant has their mail)."""
        started = time.monotonic()
        mails, unsealed = data.backlog(env)
        first = (mails, unsealed)
        if self.args.quick:
            # A run that proves the harness works measures nothing worth a clean start.
            say(f"  backlog after {after}: {mails:,} mails, {unsealed:,} audit entries; not waited for (--quick)")
            return
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

    # --- the scenarios ---------------------------------------------------------------------------

    def rush(self, db: str, srv: Any, env: dict[str, str], fx: data.Fixture, bare: LoadResult) -> None:
        """Distinct applicants through the admin API, each once: all but the last few with wrk,
        then those one at a time (the statements of one application, once the places are gone)."""
        n, k = self.rush_applicants, self.alone_count
        path = f"/api/v1/admin/schemes/{fx.rush_slug}/applications"
        profiler = self.profiler(srv, db, "rush")
        # Bounded by count (each applicant once); the time bound is only a safety net.
        load = self.wrk(srv.url, path=path, body=data.RUSH_BODY, items_file=fx.rush_kvks, limit=n - k,
                        seconds=max(120.0, n / 8), token=fx.admin_token, connections=self.args.connections)
        self.finish_profile(profiler)
        problems = []
        if load.sent < n - k:
            problems.append(f"time bound reached after {load.sent} of {n - k} applicants (under {n / 8:.0f} s)")
        if load.count(201) != n - k:
            problems.append(f"{load.count(201)} of {n - k} applications answered 201")
        headers = (("Authorization", f"Bearer {fx.admin_token}"), ("Content-Type", "application/json"))
        last = fx.rush_kvks.read_text().split()[n - k:n]
        alone, more = self.alone(srv, [Request("POST", path, data.RUSH_BODY.replace("{item}", kvk), headers)
                                       for kvk in last], 201, "rush")
        problems += more
        problems += data.rush_check(env, fx.rush_slug, cap=self.rush_cap, applicants=n)
        problems += [f"reconcile: {p}" for p in data.reconcile(env)[:5]]
        self.record(db, f"rush {n}→{self.rush_cap}", load, bare, problems, sql_alone=alone, applicants=n - k,
                    applicants_per_second=load.rps)

    def page_rush(self, db: str, srv: Any, env: dict[str, str], fx: data.Fixture, bare: LoadResult) -> None:
        """Opening day as applicants meet it: distinct applicants, each from an address of their own
        (``X-Forwarded-For`` through the trusted proxy), POST the application form, then the button
        behind the link their mail carries. All but the last few as two wrk runs (every form, then
        every confirmation), then those one at a time, form and button, for the statements of one
        applicant. Per applicant: applicants / (time of the forms + time of the confirmations)."""
        n, k, c = self.rush_applicants, self.alone_count, self.args.connections
        slug = fx.page_rush_slug
        who = browser.applicant(srv.url, slug)
        csrf = f"_csrf_token={quote(who.csrf_token, safe='')}"
        headers = {"Cookie": who.cookie, "X-Forwarded-For": "{2}"}
        form_path = f"/regelingen/{slug}/aanvragen"
        bound = max(120.0, n / 8)
        applied = self.wrk(srv.url, path=form_path, body=f"{csrf}&{APPLY_FORM}", content_type=FORM, headers=headers,
                           items_file=fx.page_rush_kvks, limit=n - k, seconds=bound, connections=c)
        problems = []
        if applied.count(303) != n - k:
            problems.append(f"{applied.count(303)} of {n - k} application forms answered 303")
        tokens = data.confirm_tokens(env, slug, data.PAGE_RUSH_KVK_BASE, 0, n - k)
        if len(tokens) != n - k:
            problems.append(f"{len(tokens)} of {n - k} applications await confirmation")
        links = self.work / "page-rush-confirm.txt"
        links.write_text("".join(f"{token}\t{data.applicant_address(i)}\n" for i, token in tokens))
        confirmed = self.wrk(srv.url, path="/aanvraag/bevestigen/{1}", body=csrf, content_type=FORM, headers=headers,
                             items_file=links, limit=len(tokens), seconds=bound, connections=c)
        if confirmed.count(303) != len(tokens):
            problems.append(f"{confirmed.count(303)} of {len(tokens)} confirmations answered 303")
        # The last few, one at a time: their forms, then (the tokens read meanwhile) their buttons.
        lines = [line.split("\t") for line in fx.page_rush_kvks.read_text().splitlines()[n - k:n]]
        form_alone, more = self.alone(srv, [
            Request("POST", form_path, f"{csrf}&{APPLY_FORM.replace('{1}', kvk)}",
                    (("Cookie", who.cookie), ("X-Forwarded-For", address), ("Content-Type", FORM)))
            for kvk, address in lines], 303, "page rush form")
        problems += more
        mine = data.confirm_tokens(env, slug, data.PAGE_RUSH_KVK_BASE, n - k, k)
        confirm_alone, more = self.alone(srv, [
            Request("POST", f"/aanvraag/bevestigen/{token}", csrf,
                    (("Cookie", who.cookie), ("X-Forwarded-For", data.applicant_address(i)), ("Content-Type", FORM)))
            for i, token in mine], 303, "page rush confirm")
        problems += more
        if len(mine) != k:
            problems.append(f"{len(mine)} of the {k} applications sent one at a time await confirmation")
        alone = None
        if form_alone and confirm_alone:
            alone = {key: form_alone[key] + confirm_alone[key] for key in form_alone}
        problems += data.rush_check(env, slug, cap=self.rush_cap, applicants=n)
        problems += [f"reconcile: {p}" for p in data.reconcile(env)[:5]]
        seconds = applied.seconds + confirmed.seconds
        per_second = (n - k) / seconds if seconds else 0.0
        per_applicant = None
        if "sql_counts" in applied.extra and "sql_counts" in confirmed.extra:
            both = sqlcount.Counts(**applied.extra["sql_counts"]) + sqlcount.Counts(**confirmed.extra["sql_counts"])
            per_applicant = per_request(both, n - k)
        self.record(db, f"page rush {n}→{self.rush_cap}: form", applied, bare, [], sql_alone=form_alone)
        self.record(db, f"page rush {n}→{self.rush_cap}: confirm", confirmed, bare, problems,
                    sql_alone=confirm_alone, applicants=n - k, applicants_per_second=per_second,
                    sql_per_applicant=per_applicant, sql_alone_per_applicant=alone)
        text = (f"page rush per applicant: {per_second:,.0f} applicants/s (form {applied.seconds:.1f} s + confirm "
                f"{confirmed.seconds:.1f} s for {n - k}); SQL per applicant {report.sql_text(per_applicant)} under load, "
                f"{report.sql_text(alone)} alone")
        self.results.append({"kind": "note", "text": f"Page rush ({db}): {text.split(': ', 1)[1]}."})
        say(f"  {text}")

    def scan(self, db: str, srv: Any, codes: Path, token: str, bare: LoadResult, name: str, *,
             rate: float = 0.0, page: Browser | None = None) -> LoadResult:
        """A coach's scans round-robin over the vouchers: the API with a bearer token, or (``page``)
        the page the QR code opens, signed in by cookie; then a few one at a time."""
        path = "/v/{item}" if page else "/api/v1/vouchers/{item}"
        headers = self.coach_headers(page) if page else None
        profiler = self.profiler(srv, db, name) if not rate else None
        load = self.wrk(srv.url, path=path, items_file=codes, token=None if page else token, headers=headers,
                        seconds=self.args.duration, connections=self.args.connections, rate=rate)
        self.finish_profile(profiler)
        problems = [] if load.count(200) == load.requests else [f"{load.requests - load.count(200)} answers not 200"]
        alone = None
        if not rate and self.count_dir is not None:
            sent = tuple(headers.items()) if headers else (("Authorization", f"Bearer {token}"),)
            alone, more = self.alone(srv, [Request("GET", path.replace("{item}", code), headers=sent)
                                           for code in codes.read_text().split()[:self.alone_count]], 200, name)
            problems += more
        self.record(db, name, load, bare, problems, sql_alone=alone)
        return load

    def redeem(self, db: str, srv: Any, env: dict[str, str], fx: data.Fixture, ids: list[int], codes: Path,
               conns: int, bare: LoadResult, name: str, *, full_reconcile: bool = True, providers: bool = False,
               rate: float = 0.0, page: Browser | None = None) -> LoadResult:
        """Redemptions by the first provider's coach, or (``providers``) by a coach of each
        provider in turn; as fast as they are answered, or at ``rate`` a second. With ``page``, the
        form on the voucher's page as the browser sends it (session cookie, CSRF token, the form's
        own idempotency key), answered 303. The runs at saturation of one provider end with a few
        one at a time."""
        provider_ids = fx.provider_ids if providers else [fx.provider_id]
        before = data.money_snapshot(env, ids, provider_ids)
        profiled = not rate and (name in ("redeem", "page redeem") or name.startswith("scale redeem"))
        profiler = self.profiler(srv, db, name) if profiled else None
        expect = 303 if page else 201
        if page:
            tag = self.tag()
            path = "/v/{item}"
            body = (f"_csrf_token={quote(page.csrf_token, safe='')}&amount=0%2C{data.REDEEM_AMOUNT:02d}"
                    f"&category=coaching&session_date=&reference=bench-{tag}-{{n}}&idempotency_key={tag}-{{n}}")
            load = self.wrk(srv.url, path=path, body=body, items_file=codes, content_type=FORM,
                            headers=self.coach_headers(page), seconds=self.args.duration, connections=conns, rate=rate)
        else:
            path = "/api/v1/vouchers/{item}/redemptions"
            body = data.REDEEM_BODY
            load = self.wrk(srv.url, path=path, body=body, items_file=codes,
                            token=f"@{fx.coach_tokens}" if providers else fx.coach_token, seconds=self.args.duration,
                            connections=conns, rate=rate)
        self.finish_profile(profiler)
        ok = load.count(expect)
        problems = [] if ok == load.requests else [f"{load.requests - ok} answers not {expect}"]
        alone = None
        if not rate and not providers and conns == self.args.connections and self.count_dir is not None:
            if page:
                sent = (*self.coach_headers(page).items(), ("Content-Type", FORM))
            else:
                sent = (("Authorization", f"Bearer {fx.coach_token}"), ("Content-Type", "application/json"))
            requests = [Request("POST", path.replace("{item}", code), body.replace("{n}", f"alone{i}"), sent)
                        for i, code in enumerate(codes.read_text().split()[:self.alone_count])]
            alone, more = self.alone(srv, requests, expect, name)
            problems += more
            ok += len(requests) if not more else 0
        after = data.money_snapshot(env, ids, provider_ids)
        amount = ok * data.REDEEM_AMOUNT
        if before["balance"] - after["balance"] != amount:
            problems.append(f"balances fell by {before['balance'] - after['balance']}, {expect} answers × amount = {amount}")
        if after["redeemed"] - before["redeemed"] != amount or after["provider"] - before["provider"] != amount:
            problems.append(f"redeemed or provider figures do not match the {expect} answers")
        if after["redemptions"] - before["redemptions"] != ok:
            problems.append(f"{after['redemptions'] - before['redemptions']} redemptions stored, {ok} answered {expect}")
        if full_reconcile:
            problems += [f"reconcile: {p}" for p in data.reconcile(env)[:5]]
        self.record(db, name, load, bare, problems, redeemed_cents=amount, vouchers=len(ids), sql_alone=alone)
        return load

    # --- the targets -----------------------------------------------------------------------------

    def targets(self, db: str) -> None:
        """The ratios and statement counts issue 19 sets targets for, from this run's rows; printed
        and kept in the results. A benchmark, not a test: a target missed fails nothing."""
        rows = {r["scenario"]: r for r in self.results if r.get("kind") == "http" and r["db"] == db}

        def find(prefix: str) -> dict[str, Any] | None:
            return next((r for name, r in rows.items() if name.startswith(prefix)), None)

        found: list[dict[str, Any]] = []

        def ratio(what: str, mine: float | None, theirs: float | None, versus: str, target: float,
                  note: str = "") -> None:
            if mine is None or not theirs:
                return
            value = mine / theirs
            found.append({"kind": "target", "db": db, "what": what, "value": f"{value * 100:.1f}%",
                          "versus": f"of {versus}", "measured": f"{mine:,.0f}/s vs {theirs:,.0f}/s",
                          "target": f"≥ {target * 100:.0f}%", "met": value >= target, "note": note})

        def statements(what: str, sql: dict[str, float] | None, limit: int, *, without_key: bool = False) -> None:
            if not sql:
                return
            value = sql["statements"] + (0 if without_key else sql["idempotency"])
            found.append({"kind": "target", "db": db, "what": what, "value": f"{value:.2f}",
                          "versus": "SQL statements per request" + (" outside the idempotency key's own"
                                                                    if without_key else ""),
                          "measured": "one at a time" + (f"; the key's own {sql['idempotency']:.2f}"
                                                         if without_key else ""),
                          "target": f"≤ {limit}", "met": value <= limit + 1e-9,
                          "note": "" if db == "postgres" else "on SQLite a statement runs inside the process, "
                                                              "no round trip"})

        scan, page_scan = rows.get("scan"), rows.get("page scan")
        redeem, page_redeem = rows.get("redeem"), rows.get("page redeem")
        rush = next((r for name, r in rows.items() if name.startswith("rush ")), None)
        page_rush = next((r for name, r in rows.items() if name.startswith("page rush") and name.endswith("confirm")),
                         None)
        if page_scan:
            ratio("page scan", page_scan["rps"], scan and scan["rps"], "API scan", 0.50)
            ratio("page scan", page_scan["rps"], (page_scan.get("bare") or {}).get("rps"), "bare Jinja page", 0.25)
            statements("page scan", page_scan.get("sql_alone"), 2)
        if page_redeem:
            ratio("page redemption", page_redeem["rps"], redeem and redeem["rps"], "API redemption", 0.50)
            statements("page redemption", page_redeem.get("sql_alone"), 3, without_key=True)
        if page_rush:
            ratio("page rush (applicants)", page_rush["applicants_per_second"],
                  rush and rush["applicants_per_second"], "API rush", 0.40,
                  "" if db == "postgres" else "the target is set on PostgreSQL")
        self.results.extend(found)
        if found:
            say(f"[{db}] targets of issue 19 (one run; ratios within it)")
            for row in found:
                mark = "met" if row["met"] else "NOT MET"
                note = f"; {row['note']}" if row["note"] else ""
                say(f"  {row['what']:<23} {row['value']:>7} {row['versus']:<58} target {row['target']:<6} "
                    f"{mark:<8} ({row['measured']}{note})")

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
        if set(HTTP_SCENARIOS) & set(args.scenarios) or args.scale:
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
        comparison = report.against_previous(self.out / "results.json", self.results, vars(args))
        if comparison:
            self.results.append({"kind": "note", "text": comparison})
        report.write_json(self.out / "results.json", payload)
        print()
        print(report.table(self.results))
        print()
        print(report.targets_table(self.results))
        print()
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
