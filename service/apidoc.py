"""What the OpenAPI document (``/api/schema/openapi.json``) says beyond the handlers' own
signatures: the problem details every error is answered with (``service.problems``), the bearer
token, the ``Idempotency-Key`` header and ``Retry-After``; and the path and query parameters the
API's routes share. ``tests/test_openapi.py`` holds the document to the API.

Litestar takes ``responses`` per route only; :class:`ApiController` gives a controller's routes
the error statuses they all share, and a route adds its own with ``responses=problems(...)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import msgspec
from litestar import Controller
from litestar.handlers import BaseRouteHandler, HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    Components,
    OpenAPIHeader,
    OpenAPIType,
    Operation,
    Parameter,
    Schema,
    SecurityRequirement,
    SecurityScheme,
)
from litestar.params import PathParameter, QueryParameter
from litestar.typing import FieldDefinition

# Litestar's own schema of a msgspec Struct, which says nothing of ``forbid_unknown_fields``.
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin

__all__ = ("COMPONENTS", "DESCRIPTION", "PUBLIC_PROBLEMS", "TEXT", "TEXT_PATTERN", "TOKEN", "TOKEN_PROBLEMS", "WRITE_PROBLEMS",
           "ApiController", "ApiOperation", "IdempotentOperation", "Month", "PublicId", "RowId", "SchemeFilter", "Slug",
           "StrictStructSchemaPlugin", "VoucherCode", "answer", "problems")

PROBLEM_MEDIA_TYPE = "application/problem+json"

DESCRIPTION = """\
The JSON API of the ondernemersvoucher: public scheme figures, what a coach does with a voucher
code, a provider's offers and statements, and the municipality's operations.

* Systems authenticate with a bearer token (role `coach` or `admin`); the API takes no cookies.
* Every error is an RFC 9457 problem (`application/problem+json`) with a stable `code`; its
  `title` is in the request's language (`Accept-Language`, `?lang=nl|en`).
* Writes take an `Idempotency-Key` header: a retry with the same key and body does the work once.
* A 429 says in `Retry-After` how many seconds to wait.
* Amounts are integers in euro cents.
"""

TOKEN: list[SecurityRequirement] = [{"bearer": []}]
"""The security requirement of every route that needs an API token."""

COMPONENTS = Components(security_schemes={
    "bearer": SecurityScheme(
        type="http", scheme="bearer", bearer_format="vt_…",
        description="An API token the municipality issues (`vouchers token create`): role `coach` for a "
                    "provider's systems, role `admin` for the municipality's. The API takes no cookies.",
    ),
})


class InvalidParam(msgspec.Struct, frozen=True):
    name: str
    """The field, query or path parameter, or header (``body`` for the body as a whole)."""
    reason: str


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """RFC 9457 problem details, as ``service.problems`` writes them; in the request's language."""

    type: str
    """``urn:vouchers:problem:<code>``."""
    title: str
    status: int
    code: str
    """Stable and in English: what a program should act on."""
    detail: str | None = None
    invalid_params: list[InvalidParam] | None = None
    """Each field that is wrong, for a 400 or 422 about the request's content."""
    request_id: str | None = None
    """For a 500: the id in the ``X-Request-Id`` header, which the server's log line carries."""


_WHY = {
    400: "The request is malformed: a parameter or the body does not match this document "
         "(`invalid_params` names each field).",
    401: "No API token, or one that is unknown, revoked or expired.",
    403: "The token's role or provider may not do this.",
    404: "There is no such thing (scheme, voucher, hold, redemption, …).",
    409: "The request clashes with the current state, or one with the same Idempotency-Key is still running.",
    413: "The body is larger than the server accepts.",
    422: "Well formed, but the scheme's rules refuse it (a mistyped code, a balance too low, an ended voucher, "
         "an Idempotency-Key used for another request, …); `code` says which rule.",
    429: "Too many attempts (for example unknown voucher codes); wait for `Retry-After` seconds.",
    500: "Something failed on the server; nothing was changed. `request_id` identifies the log line.",
    503: "The database is too busy; try again after `Retry-After` seconds.",
}


def problems(*statuses: int) -> dict[int, ResponseSpec]:
    """The problem-details answers a route (or a controller's routes) can give."""
    return {status: ResponseSpec(Problem, description=_WHY[status], media_type=PROBLEM_MEDIA_TYPE,
                                 generate_examples=False) for status in statuses}


def answer(struct: Any, description: str) -> ResponseSpec:
    """The success answer of a route that encodes its own body (``Response[bytes]``)."""
    return ResponseSpec(struct, description=description, generate_examples=False)


TEXT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
"""Free text: anything but control characters (tab and line breaks are text), which the edge
refuses in every body and query value (``service.edge``)."""
TEXT = {"pattern": TEXT_PATTERN}
"""``schema_extra`` of a free-text query parameter."""

# Path and query parameters. Ids are bounded because the database's integers are; the formats of
# codes, slugs and months are documented, and the domain answers a value outside them with a 404
# or a 422 that says what is wrong (``code-mistyped``, ``month-invalid``).
RowId = Annotated[int, PathParameter(ge=1, le=2**31 - 1)]
VoucherCode = Annotated[str, PathParameter(
    description="The voucher code: 24 symbols (Crockford base32, the last a check symbol), in any case, "
                "usually in groups of four with dashes; I, L and O read as 1, 1 and 0.",
    schema_extra={"pattern": r"^[0-9A-TV-Za-tv-z]{4}(-?[0-9A-TV-Za-tv-z]{4}){5}$"})]
Slug = Annotated[str, PathParameter(description="The scheme's short name, as in its file.",
                                    schema_extra={"pattern": r"^[a-z0-9][a-z0-9-]{1,62}$"})]
PublicId = Annotated[str, PathParameter(description="The application number the applicant was given.",
                                        schema_extra={"pattern": r"^A[0-9A-HJKMNP-TV-Z]{12}$"})]
SchemeFilter = Annotated[str | None, QueryParameter(description="Only this scheme's (its short name).",
                                                   schema_extra=TEXT)]
Month = Annotated[str | None, QueryParameter(description="Year and month, e.g. 2026-11; the current month if left out.",
                                             schema_extra={"pattern": r"^[0-9]{4}-(0[1-9]|1[0-2])$"})]

PUBLIC_PROBLEMS = (400, 401, 500, 503)
"""Every API route: a malformed request, an unknown token, a failure, a saturated database."""
TOKEN_PROBLEMS = (*PUBLIC_PROBLEMS, 403)
WRITE_PROBLEMS = problems(409, 413, 422)
"""A route that changes something: in flight or clashing, too large, refused by the rules."""


_RETRY_AFTER = OpenAPIHeader(schema=Schema(type=OpenAPIType.INTEGER, minimum=1),
                             description="Seconds to wait before trying again.")
_WWW_AUTHENTICATE = OpenAPIHeader(schema=Schema(type=OpenAPIType.STRING, const="Bearer"), required=True,
                                  description="The API takes a bearer token.")
_REPLAYED = OpenAPIHeader(schema=Schema(type=OpenAPIType.STRING, const="true"),
                          description="Present when this is the stored answer to an earlier request "
                                      "with the same Idempotency-Key.")
_IDEMPOTENCY_KEY = Parameter(
    name="Idempotency-Key", param_in="header", required=False,
    schema=Schema(type=OpenAPIType.STRING, min_length=1, max_length=200),
    description="Any unique string (a UUID, say). Sending the request again with the same key and the same "
                "body does it once and answers every retry with the first answer (`Idempotent-Replayed: true`); "
                "the same key with another body is a 422, and while the first still runs a 409.",
)


@dataclass
class ApiOperation(Operation):
    """Adds the response headers ``ResponseSpec`` cannot describe."""

    def __post_init__(self) -> None:
        for status, response in (self.responses or {}).items():
            if not hasattr(response, "headers"):
                continue
            if status in ("429", "503"):
                response.headers = {**(response.headers or {}), "Retry-After": _RETRY_AFTER}
            elif status == "401":
                response.headers = {**(response.headers or {}), "WWW-Authenticate": _WWW_AUTHENTICATE}


@dataclass
class IdempotentOperation(ApiOperation):
    """A route that takes an ``Idempotency-Key`` header (``service.api.run_idempotent``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.parameters = [*(self.parameters or []), _IDEMPOTENCY_KEY]
        for status, response in (self.responses or {}).items():
            if status.startswith("2") and hasattr(response, "headers"):
                response.headers = {**(response.headers or {}), "Idempotent-Replayed": _REPLAYED}


class ApiController(Controller):
    """A controller whose routes share error answers: ``problem_statuses`` are documented on each
    of its routes, next to the ones a route names itself."""

    problem_statuses: ClassVar[tuple[int, ...]] = ()

    def get_route_handlers(self) -> list[BaseRouteHandler]:
        handlers = super().get_route_handlers()
        for handler in handlers:
            if isinstance(handler, HTTPRouteHandler):
                handler.responses = {**problems(*type(self).problem_statuses), **(handler.responses or {})}
                if handler.operation_class is Operation:
                    handler.operation_class = ApiOperation
        return handlers




class StrictStructSchemaPlugin(StructSchemaPlugin):
    """A request body (a Struct with ``forbid_unknown_fields``) says what the API refuses: a field
    it does not know (``additionalProperties: false``) and control characters in text."""

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        info = msgspec.inspect.type_info(field_definition.type_)
        if isinstance(info, msgspec.inspect.StructType) and info.forbid_unknown_fields:
            schema.additional_properties = False
            for prop in (schema.properties or {}).values():
                _plain_text(prop)
        return schema


def _plain_text(schema: Any) -> None:
    if not isinstance(schema, Schema):
        return
    if schema.type == OpenAPIType.STRING and schema.pattern is None and schema.enum is None \
            and schema.format is None and schema.const is None:
        schema.pattern = TEXT_PATTERN
    for inner in (*(schema.one_of or ()), *(schema.any_of or ()), schema.items):
        _plain_text(inner)
