"""The ASGI application for servers: ``granian --interface asgi service.asgi:app``."""

import gc
import logging
import sys

from .app import create_app

# Failures are logged as one JSON line each (see problems.py) to standard error, where the
# process manager collects them; the server's own access log stays off (URLs carry codes).
_errors = logging.getLogger("service")
if not _errors.handlers:
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    _errors.addHandler(_handler)
    _errors.setLevel(logging.INFO)
    _errors.propagate = False

app = create_app()

# What is alive now (the modules, the app, its routes and templates) lives as long as the process.
# Left to the collector, every full collection walked all of it again: 60-75 ms in which the event
# loop, and every request in flight, stood still, about once a second under load; the slowest
# hundredth of scans waited that long (BENCHMARKS.md). Frozen, a full collection walks only what
# came after: 3-4 ms. And a request leaves almost no cycles behind, so the youngest generation is
# collected after 10,000 new objects rather than 700: under load that was about 30 collections a
# second per process, now hardly any.
gc.collect()
gc.freeze()
gc.set_threshold(10_000, 10, 10)
