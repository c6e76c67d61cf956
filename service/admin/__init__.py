"""The municipality's side: staff screens under ``/beheer`` (dashboard, work queues,
interventions, audit log, council reports, data-subject export).

The pages call the domain: ``service.interventions`` (decisions and interventions, and their
previews), ``service.refusals`` (the checks an action and its preview share), ``service.reports``
(figures), ``service.audit``, ``service.privacy`` and ``service.municipality`` (staff accounts).
``charts.py`` draws the SVG charts."""

from __future__ import annotations

from litestar import Router

from .pages import AdminPages
from .signin import AdminSignInPages
from .web import AuditContextMiddleware

__all__ = ("AuditContextMiddleware", "admin_router")

admin_router = Router(path="/", route_handlers=[AdminSignInPages, AdminPages], include_in_schema=False)
