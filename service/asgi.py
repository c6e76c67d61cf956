"""The ASGI application for servers: ``granian --interface asgi service.asgi:app``."""

import gc

from . import logs
from .app import create_app
from .settings import Settings

# One structured line per request and per failure (service/logs.py) to standard error, where the
# process manager collects them; the server's own access log stays off (URLs carry codes).
logs.configure(Settings.from_env())

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
