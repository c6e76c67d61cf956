"""``create_app``: the one place where the service is wired together."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Litestar, Request, get
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException
from litestar.middleware import ASGIMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template
from litestar.routes import HTTPRoute
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from sqlalchemy import select

from . import __version__, i18n, metrics, schemes, worker
from .apidoc import COMPONENTS, DESCRIPTION, StrictStructSchemaPlugin
from .admin import AuditContextMiddleware, admin_router
from .api import api_router
from .auth import AuthMiddleware
from .coach import coach_router
from .edge import EdgeMiddleware
from .entrepreneur import entrepreneur_router
from .errors import DomainError
from .health import health_routes
from .logs import RequestLog
from .models import Scheme
from .problems import BUSY_RETRY_AFTER, domain_error_handler, http_error_handler, unexpected_error_handler
from .resubmit import PageTemplate
from .revocations import Revocations
from .runtime import Runtime
from .sitegen.collect import ARNHEM_CONTACT
from .settings import Settings
from .web import ForwardedClientMiddleware, head_as_get

__all__ = ("create_app",)

HERE = Path(__file__).parent

# Pages send no script and load nothing from other hosts; this says so to the browser.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
     b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), geolocation=(), microphone=()"),
]


def security_headers(settings: Settings) -> list[tuple[bytes, bytes]]:
    """``SECURITY_HEADERS``, with the OpenID Connect providers' addresses allowed as form targets:
    a sign-in (or sign-out) button's answer sends the browser on to the provider, and browsers
    hold such a redirect to the page's ``form-action``."""
    origins = sorted({_origin(url) for url in (settings.eherkenning_issuer, settings.staff_oidc_issuer) if url})
    if not origins:
        return SECURITY_HEADERS
    extra = " ".join(origins).encode()
    return [(name, value.replace(b"form-action 'self'", b"form-action 'self' " + extra))
            if name == b"content-security-policy" else (name, value) for name, value in SECURITY_HEADERS]


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class LanguageCookieMiddleware(ASGIMiddleware):
    """Remember a language chosen with ``?lang=`` in a cookie. The language itself, the security
    headers and the request id are set for every request by ``edge.EdgeMiddleware``."""

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        chosen = Request(scope).query_params.get("lang")
        if chosen not in i18n.LOCALES:
            await next_app(scope, receive, send)
            return

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"set-cookie", f"lang={chosen}; Path=/; Max-Age=31536000; SameSite=Lax".encode()))
                message["headers"] = headers
            await send(message)

        await next_app(scope, receive, send_with_cookie)


def _template_engine() -> JinjaTemplateEngine:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True),
        extensions=["jinja2.ext.i18n"],
    )
    env.template_class = PageTemplate
    env.install_gettext_callables(i18n.gettext, i18n.ngettext, newstyle=True)  # type: ignore[attr-defined]
    env.filters["money"] = i18n.format_money
    env.filters["day"] = i18n.format_day
    env.filters["last_day"] = i18n.format_last_day
    env.filters["moment"] = i18n.format_moment
    env.filters["month"] = i18n.format_month
    env.filters["number"] = i18n.format_number
    env.filters["percent"] = i18n.format_percent
    env.globals["localised"] = i18n.localised
    # The same contact facts as the public site's footer and contact page.
    env.globals["contact"] = ARNHEM_CONTACT
    env.globals["current_locale"] = i18n.current_locale
    return JinjaTemplateEngine.from_environment(env)


@get("/", include_in_schema=False)
async def home(rt: NamedDependency[Runtime]) -> Template:
    async with rt.sessionmaker() as session:
        items = [await schemes.summary(session, s) for s in await session.scalars(select(Scheme).order_by(Scheme.id))]
    return Template("index.html", context={"schemes": items})


def _allow_every_method(app: Litestar) -> None:
    """Litestar 2 answers OPTIONS on a path with more than one handler with the methods of the first
    handler only (litestar#4169, fixed in 3): point each path's OPTIONS answer at the whole route."""
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for handler in route.route_handlers:
                if handler.handler_name == "options_handler":
                    handler._fn = route.create_options_handler(route.path).fn


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    rt = runtime or Runtime.create(settings)

    revocations = Revocations(settings)

    @contextlib.asynccontextmanager
    async def background(app: Litestar) -> AsyncIterator[None]:
        tasks = worker.tasks(rt) if settings.background_tasks else []
        if not settings.is_sqlite:
            tasks.append(asyncio.create_task(revocations.listen()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await rt.close()
            metrics.process_stopped()

    async def provide_runtime() -> Runtime:
        return rt

    # First, so that everything after it (rate limits, the audit log) sees the real client.
    proxies = rt.settings.proxy_networks()
    forwarded = [ForwardedClientMiddleware(proxies)] if proxies else []

    app = Litestar(
        route_handlers=[
            home,
            *health_routes,
            metrics.metrics_route,
            api_router,
            entrepreneur_router,
            coach_router,
            admin_router,
            create_static_files_router("/static", [HERE / "static"], include_in_schema=False),
        ],
        dependencies={"rt": Provide(provide_runtime, use_cache=True)},
        middleware=[*forwarded, LanguageCookieMiddleware(), AuthMiddleware(rt, revocations),
                    AuditContextMiddleware()],
        exception_handlers={DomainError: domain_error_handler, HTTPException: http_error_handler,
                            Exception: unexpected_error_handler},
        csrf_config=CSRFConfig(
            secret=settings.derive_key("csrf").hex(),
            cookie_httponly=True,
            cookie_samesite="lax",
            cookie_secure=settings.base_url.startswith("https://"),
            # The API is authenticated by bearer tokens only (see AuthMiddleware), never cookies.
            exclude=["^/api/"],
        ),
        template_config=TemplateConfig(engine=_template_engine()),
        plugins=[StrictStructSchemaPlugin()],
        openapi_config=OpenAPIConfig(
            title="Ondernemersvoucher Arnhem", version=__version__, path="/api/schema", components=COMPONENTS,
            description=DESCRIPTION,
            # Only the JSON document: the HTML viewers load scripts from other hosts.
            render_plugins=[JsonRenderPlugin()],
        ),
        request_max_body_size=settings.max_request_body_bytes,
        lifespan=[background],
        state=State({BUSY_RETRY_AFTER: settings.db_busy_retry_after_seconds}),
        debug=False,
    )
    _allow_every_method(app)
    app.asgi_handler = head_as_get(app.asgi_handler)
    # Around the router, so that it also answers for routes that do not exist (404, 405).
    app.asgi_handler = EdgeMiddleware(app.asgi_handler, headers=security_headers(settings), https=settings.base_url.startswith(
        "https://"), max_body_bytes=settings.max_request_body_bytes)
    # Outermost, so that its line has the request id, the route and the final status.
    app.asgi_handler = RequestLog(app.asgi_handler, observers=[metrics.observer(rt)])
    return app
