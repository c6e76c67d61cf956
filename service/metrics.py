"""``/metrics`` in Prometheus text format (prometheus-client).

Two kinds of figures:

- counted by each web process as requests pass (requests and latency by route template and status,
  lookups refused, the database pool in use). Under ``vouchers serve`` the processes share them
  through files in ``PROMETHEUS_MULTIPROC_DIR``, which ``serve`` sets up (prometheus-client's
  multiprocess mode), so a scrape that reaches any process sees the sum of all;
- read from the database when scraped (outbox backlog and the oldest due mail, audit entries
  awaiting their seal, places and budget per scheme, the background process's heartbeat): they
  are the same whichever host or process answers.

Only addresses in ``VOUCHERS_METRICS_ALLOWED`` (loopback by default) get an answer; others get 403.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.exceptions import PermissionDeniedException
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from sqlalchemy import func, select, text

from .logs import method_of
from .models import OutboxMessage, Scheme, utcnow
from .models_admin import AuditEntry
from .models_ops import Heartbeat
from .runtime import Runtime

__all__ = ("metrics_route", "observer", "process_stopped")

REQUESTS = Counter("vouchers_http_requests", "HTTP requests answered, by route template, method and status.",
                   ["route", "method", "status"])
LATENCY = Histogram("vouchers_http_request_duration_seconds", "Time to answer, by route template and status.",
                    ["route", "status"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
LOOKUPS_REFUSED = Counter("vouchers_lookups_refused",
                          "Voucher lookups refused (429) because the client mistyped or guessed too many codes.",
                          ["route"])
POOL_IN_USE = Gauge("vouchers_db_pool_connections_in_use", "Database connections checked out of the pools.",
                    multiprocess_mode="livesum")
POOL_SIZE = Gauge("vouchers_db_pool_size", "Database connections the pools keep (without overflow).",
                  multiprocess_mode="livesum")


def observer(rt: Runtime) -> Callable[[Any, int, float], None]:
    """What ``logs.RequestLog`` calls after each request."""
    pool: Any = rt.engine.sync_engine.pool
    POOL_SIZE.set(pool.size() if hasattr(pool, "size") else 0)

    def observe(scope: Any, status: int, seconds: float) -> None:
        route = scope.get("path_template") or "(no route)"
        REQUESTS.labels(route, method_of(scope), str(status)).inc()
        LATENCY.labels(route, str(status)).observe(seconds)
        if status == 429 and "{code" in route:
            LOOKUPS_REFUSED.labels(route).inc()
        POOL_IN_USE.set(pool.checkedout() if hasattr(pool, "checkedout") else 0)

    return observe


def process_stopped() -> None:
    """Leave this process's pool gauges out of the sums from now on (its counters stay counted)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        mark_process_dead(os.getpid())


def _allowed(request: Request[Any, Any, Any], networks: Iterable[Any]) -> bool:
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)


class _Figures:
    """Gauges read from the database for one scrape."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def _gauge(name: str, documentation: str, value: float | None = None, labels: list[str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    if value is not None:
        family.add_metric([], value)
    return family


async def database_figures(rt: Runtime) -> list[Metric]:
    now = utcnow()
    async with rt.reader() as session:
        backlog = await session.scalar(select(func.count()).select_from(OutboxMessage)
                                       .where(OutboxMessage.status == "pending"))
        oldest_due = await session.scalar(select(func.min(OutboxMessage.next_attempt_at)).where(
            OutboxMessage.status == "pending", OutboxMessage.next_attempt_at <= now))
        unsealed, oldest_unsealed = (await session.execute(
            select(func.count(), func.min(AuditEntry.at)).where(AuditEntry.chain_seq.is_(None)))).one()
        beat = await session.scalar(select(func.max(Heartbeat.seen_at)))
        schemes = (await session.execute(select(Scheme.slug, Scheme.max_places, Scheme.places_used,
                                                Scheme.budget_cents, Scheme.committed_cents))).all()
        connections = [] if rt.settings.is_sqlite else (await session.execute(text(
            "SELECT application_name, coalesce(state, '') AS state, count(*) AS n FROM pg_stat_activity "
            "WHERE datname = current_database() AND backend_type = 'client backend' "
            "GROUP BY application_name, state"))).all()

    def age(moment: Any) -> float:
        if moment is None:
            return 0.0
        if moment.tzinfo is None:  # SQLite's min()/max() come back as stored
            moment = moment.replace(tzinfo=now.tzinfo)
        return max(0.0, (now - moment).total_seconds())

    families = [
        _gauge("vouchers_outbox_backlog", "Mails waiting in the outbox (due now or later).", backlog or 0),
        _gauge("vouchers_outbox_oldest_due_age_seconds", "How long the oldest mail that is due has waited (0: none).",
               age(oldest_due)),
        _gauge("vouchers_audit_unsealed_entries", "Audit entries awaiting their seal in the hash chain.", unsealed or 0),
        _gauge("vouchers_audit_oldest_unsealed_age_seconds", "How long the oldest entry awaiting its seal has "
               "waited (0: none).", age(oldest_unsealed)),
        _gauge("vouchers_worker_heartbeat_age_seconds", "Since a background process last wrote its heartbeat "
               "(-1: never).", age(beat) if beat is not None else -1.0),
    ]
    per_scheme = {
        "vouchers_scheme_places_used": ("Entrepreneurs admitted.", lambda s: s.places_used),
        "vouchers_scheme_places_left": ("Places still open.", lambda s: s.max_places - s.places_used),
        "vouchers_scheme_places": ("Places in all (the cap).", lambda s: s.max_places),
        "vouchers_scheme_budget_committed_cents": ("Budget committed to vouchers, in cents.",
                                                   lambda s: s.committed_cents),
        "vouchers_scheme_budget_left_cents": ("Budget not committed, in cents.",
                                              lambda s: s.budget_cents - s.committed_cents),
        "vouchers_scheme_budget_cents": ("The scheme's budget, in cents.", lambda s: s.budget_cents),
    }
    if not rt.settings.is_sqlite:
        # The server's view: every host's pools, the fast path's own connections, backups, psql.
        family = _gauge("vouchers_db_server_connections", "Connections to this database on the PostgreSQL "
                        "server, by application_name and state (active, idle, idle in transaction).",
                        labels=["application", "state"])
        for row in connections:
            family.add_metric([row.application_name or "(none)", row.state or "(none)"], row.n)
        families.append(family)
    for name, (documentation, value) in per_scheme.items():
        family = _gauge(name, documentation, labels=["scheme"])
        for scheme in schemes:
            family.add_metric([scheme.slug], value(scheme))
        families.append(family)
    return families


def _registry(figures: list[Metric]) -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:  # one process (an app made by create_app, the tests): its own counters
        registry = CollectorRegistry()
        registry.register(_Default())
    registry.register(_Figures(figures))
    return registry


class _Default:
    """The process-wide registry's metrics, without registering into it per scrape."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


@get("/metrics", include_in_schema=False, cache=False)
async def metrics_route(request: Request[Any, Any, Any], rt: NamedDependency[Runtime]) -> Response[bytes]:
    """Prometheus text format, for the configured addresses only."""
    if not _allowed(request, rt.settings.metrics_networks()):
        raise PermissionDeniedException()
    started = time.perf_counter()
    figures = await database_figures(rt)
    figures.append(_gauge("vouchers_metrics_database_seconds", "Time this scrape spent reading the database.",
                          time.perf_counter() - started))
    return Response(generate_latest(_registry(figures)), media_type=CONTENT_TYPE_LATEST)
