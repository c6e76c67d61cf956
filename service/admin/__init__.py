"""The municipality's side: staff screens under ``/beheer`` (dashboard, work queues,
interventions, audit log, council reports, data-subject export).

Domain code lives beside the pages but without web imports: ``interventions.py`` (decisions and
interventions), ``reports.py`` (figures), ``charts.py`` (SVG); plus ``service.audit``,
``service.privacy`` and ``service.municipality`` (staff accounts)."""

from __future__ import annotations

from litestar import Router

from .pages import AdminPages
from .signin import AdminSignInPages
from .web import AuditContextMiddleware

__all__ = ("AuditContextMiddleware", "admin_router")

admin_router = Router(path="/", route_handlers=[AdminSignInPages, AdminPages], include_in_schema=False)
