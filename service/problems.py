"""The one place where errors become HTTP answers: RFC 9457 problem details for the API,
an error page for HTML pages. Messages are translated into the request's language."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, NotAuthorizedException, ValidationException
from litestar.response import Template

from . import i18n, logs
from .db import is_saturated
from .errors import N_, Conflict, DomainError, Forbidden, InvalidInput, NotFound, Refused, TooManyAttempts
from .resubmit import FALLBACK_DETAIL, TITLE, FormAgain, csrf_failed

__all__ = ("LOGIN_FAILURE_STATUS", "STATUS", "domain_error_handler", "http_error_handler", "login_failure_status",
           "problem_body", "request_id_of", "retry_after",
           "unexpected_error_handler", "wants_html")

log = logging.getLogger(__name__)

STATUS: dict[type[DomainError], int] = {
    InvalidInput: 422,
    NotFound: 404,
    Refused: 422,
    Conflict: 409,
    Forbidden: 403,
    TooManyAttempts: 429,
}
PROBLEM_TYPE = "urn:vouchers:problem:"
BUSY_RETRY_AFTER = "busy_retry_after_seconds"
"""Key in the app's state of ``Settings.db_busy_retry_after_seconds``."""
_HTTP_CODES = {400: "bad-request", 401: "not-signed-in", 403: "forbidden", 404: "not-found", 405: "method-not-allowed",
               413: "body-too-large", 429: "too-many-attempts"}
_HTTP_TITLES = {
    400: N_("The request is not valid."),
    401: N_("Please sign in first."),
    403: N_("You may not do this."),
    404: N_("Not found."),
    405: N_("This method is not allowed here."),
    413: N_("The request is too large."),
    429: N_("Too many attempts. Please wait a while and try again."),
}


def status_of(exc: DomainError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 400


#: The status of the page shown when signing in at an OpenID Connect provider did not work, by the
#: reason of ``oidc.LoginFailed``: the provider down or slow (503), its answer not to be trusted
#: (502), the person stopped or the answer belongs elsewhere (400), not enough (403).
LOGIN_FAILURE_STATUS = {"unavailable": 503, "not-configured": 503, "unverified": 502, "no-kvk": 502,
                        "cancelled": 400, "state": 400, "level": 403, "not-allowed": 403}


def login_failure_status(reason: str) -> int:
    return LOGIN_FAILURE_STATUS.get(reason, 502)


def problem_body(exc: DomainError) -> dict[str, Any]:
    title = i18n.gettext(exc.message)
    if exc.params:
        params = {k: i18n.format_money(v) if k in ("balance",) else v for k, v in exc.params.items()}
        title = title % params
    body: dict[str, Any] = {"type": PROBLEM_TYPE + exc.code, "title": title, "status": status_of(exc), "code": exc.code}
    if exc.field:
        body["invalid_params"] = [{"name": exc.field, "reason": title}]
    return body


def wants_html(request: Request[Any, Any, Any]) -> bool:
    # A form post comes from a page, whatever its Accept header says.
    return not request.url.path.startswith("/api/") and (
        "text/html" in request.headers.get("accept", "")
        or request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"))


def _problem(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(msgspec.json.encode(body), status_code=status, media_type="application/problem+json",
                    headers=headers or {})


def domain_error_handler(request: Request[Any, Any, Any], exc: DomainError) -> Response[Any]:
    body = problem_body(exc)
    headers = retry_after(exc)
    if wants_html(request):
        return Template("error.html", context={"problem": body}, status_code=body["status"], headers=headers)
    return _problem(body, body["status"], headers)


def retry_after(exc: DomainError) -> dict[str, str]:
    """``Retry-After`` (seconds) for a refusal that passes with time, such as too many attempts."""
    if isinstance(exc, TooManyAttempts):
        return {"Retry-After": str(60 * int(exc.params.get("minutes", 1)))}
    return {}


def http_error_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if isinstance(exc, ValidationException):
        status = 400
    title = i18n.gettext(_HTTP_TITLES.get(status, "Something went wrong."))
    body: dict[str, Any] = {"type": PROBLEM_TYPE + _HTTP_CODES.get(status, "error"), "title": title,
                            "status": status, "code": _HTTP_CODES.get(status, "error")}
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list):
        body["invalid_params"] = [
            {"name": item.get("key") or "body", "reason": item.get("message", "")} for item in exc.extra if isinstance(item, dict)
        ]
        names = ", ".join(p["name"] for p in body["invalid_params"])
        body["detail"] = i18n.gettext("Check these fields: %(fields)s") % {"fields": names} if names else exc.detail
    elif status >= 500:
        body["detail"] = i18n.gettext("Something went wrong on our side. Nothing was changed; please try again.")
        body["request_id"] = _log_failure(request, exc)
    # Such as the Allow header of a 405.
    headers = dict(exc.headers or {})
    if isinstance(exc, NotAuthorizedException):
        headers["WWW-Authenticate"] = "Bearer"
    if wants_html(request) and csrf_failed(request, exc):
        # Nothing was done; show the form again with what was typed (or say how to send it again).
        body.update(title=i18n.gettext(TITLE), detail=i18n.gettext(FALLBACK_DETAIL))
        return FormAgain(Template("error.html", context={"problem": body}, status_code=status))
    if wants_html(request):
        return Template("error.html", context={"problem": body}, status_code=status, headers=headers)
    return _problem(body, status, headers)


def unexpected_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Anything no other handler knows: logged once, answered as the service's own 500; but a
    saturated database (:func:`db.is_saturated`) is a 503 to try again after."""
    if is_saturated(exc):
        return database_busy(request, exc)
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + "internal-error", "title": i18n.gettext("Something went wrong."), "status": 500,
        "code": "internal-error",
        "detail": i18n.gettext("Something went wrong on our side. Please try again later."),
        "request_id": _log_failure(request, exc),
    }
    if wants_html(request):
        return Template("error.html", context={"problem": body}, status_code=500)
    return _problem(body, 500)


def database_busy(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """503 with ``Retry-After``: the database takes no more connections now, or none of this
    process's was free in time. One warning line (no traceback: nothing is broken) lets an
    operator see how often."""
    seconds = request.app.state.get(BUSY_RETRY_AFTER, 5)  # set by ``app.create_app`` from the settings
    request_id = request_id_of(request.scope)
    log.warning(msgspec.json.encode({
        "event": "database_busy", "request_id": request_id, "method": request.method,
        "route": request.scope.get("path_template", "?"), "error": _chain(exc),
    }).decode())
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + "database-busy", "title": i18n.gettext("The service is very busy right now."),
        "status": 503, "code": "database-busy",
        "detail": i18n.gettext("Please try again in a moment."), "request_id": request_id,
    }
    headers = {"Retry-After": str(seconds)}
    if wants_html(request):
        return Template("error.html", context={"problem": body}, status_code=503, headers=headers)
    return _problem(body, 503, headers)


def _chain(exc: BaseException) -> list[str]:
    """The types of an error and what it was raised from or during (never their messages)."""
    chain = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 5:
        chain.append(type(seen).__qualname__)
        seen = seen.__cause__ or seen.__context__
    return chain


def request_id_of(scope: Any) -> str:
    """The id the answer carries in ``X-Request-Id`` (set by ``edge.EdgeMiddleware``)."""
    return str(scope.get("state", {}).get("request_id", "-"))


def _log_failure(request: Request[Any, Any, Any], exc: BaseException) -> str:
    """One line an operator can find by the id the user quotes (``service.logs``). The route is the
    template (``/v/{code}``), never the path, and exception messages are left out: paths and messages
    can hold voucher codes, tokens, e-mail addresses and SQL parameters. Types and frames are
    enough to find the fault."""
    request_id = request_id_of(request.scope)
    logs.event(log, logging.ERROR, "unexpected_error", request_id=request_id, method=request.method,
               route=request.scope.get("path_template", "?"), **logs.failure_fields(exc))
    return request_id
