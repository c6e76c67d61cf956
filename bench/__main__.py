"""``python -m bench``: measure the voucher service under load against a bare Litestar endpoint.

    python -m bench [--db sqlite|postgres|both] [--workers 2] [--duration 10]
                    [--scenarios rush,page-rush,scan,page-scan,redeem,page-redeem,qr,site]
                    [--rush-applicants N] [--scale] [--quick] [--profile]

Starts the real server (``vouchers serve --workers N``, granian) on a fresh database, drives it
with wrk from a separate process over 127.0.0.1 (the API as systems use it, and the pages as a
coach's and an applicant's browser send them), counts the SQL statements of every request in
the server's web processes, checks the books after every scenario, prints one table and the
ratios of the targets, writes build/bench/results.json and rewrites the generated section of
BENCHMARKS.md. See BENCHMARKS.md for what each scenario does.
"""

from __future__ import annotations

import argparse
import sys

from .run import SCENARIOS, main as run_main


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--workers", type=int, default=2, help="server processes (granian workers), for both servers")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per timed scenario (default 10)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated, from {','.join(SCENARIOS)} (default: all)")
    p.add_argument("--rush-applicants", type=int, default=0,
                   help="distinct applicants in each rush, API and pages (default 10,000; --quick 200); "
                        "the cap stays 300 (--quick 10)")
    p.add_argument("--scale", action="store_true",
                   help="also load 1,000,000 vouchers into PostgreSQL and run scan and redeem again, at "
                        "saturation and at a fixed rate, as at 1,000 (slow)")
    p.add_argument("--scale-vouchers", type=int, default=1_000_000, help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true",
                   help="a tiny run to prove the harness works: 1 s scenarios, small counts; no BENCHMARKS.md update")
    p.add_argument("--profile", action="store_true",
                   help="sample the server with py-spy during rush, the scans and the redemptions")
    p.add_argument("--sql-log", action="store_true",
                   help="also write the text of the statements of one request of each path, sent alone, to "
                        "<out>/sql/<db>-<path>.sql")
    p.add_argument("--no-sql-count", action="store_true",
                   help="start the server without the statement counter (bench/sqlcount.py), to see that it "
                        "costs nothing measurable")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (hot spot: --hot-connections)")
    p.add_argument("--hot-connections", type=int, default=200)
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--out", default="build/bench", help="folder for results.json, logs, profiles")
    p.add_argument("--no-markdown", action="store_true", help="do not rewrite BENCHMARKS.md")
    args = p.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if args.quick:
        args.duration = min(args.duration, 1.0)
        args.hot_connections = min(args.hot_connections, 50)
        args.connections = min(args.connections, 32)
        args.no_markdown = True
    cap, alone = (10, 5) if args.quick else (300, 20)
    if args.rush_applicants and args.rush_applicants <= cap + alone:
        p.error(f"--rush-applicants must be more than {cap + alone}: the cap ({cap}) and the {alone} applicants "
                f"sent one at a time, who join the waiting list")
    if args.duration <= 0 or args.duration > 600:
        p.error("--duration must be between 0 and 600 seconds")
    return args


if __name__ == "__main__":
    sys.exit(run_main(parse()))
