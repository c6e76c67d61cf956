"""Run by Python at the start of every process of a server the benchmark starts (this folder is on
its ``PYTHONPATH`` then, never otherwise): count the SQL statements it sends, see
``bench/sqlcount.py``."""

import os

if os.environ.get("BENCH_SQL_COUNT_DIR"):
    from pathlib import Path

    from bench.sqlcount import install

    install(Path(os.environ["BENCH_SQL_COUNT_DIR"]), log=os.environ.get("BENCH_SQL_LOG") == "1")
