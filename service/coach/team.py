"""A provider's staff accounts: who can sign in, inviting a colleague (mailed a link to choose
a password) and removing one. Every query is limited to the signed-in coach's provider."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import Body, FromPath, FromQuery
from litestar.response import Redirect, Template

from .. import staff
from ..auth import Principal, requires
from ..db import run_in_transaction
from ..errors import DomainError
from ..runtime import Runtime
from .common import NO_STORE, errors_of, page, principal, status, to_login

__all__ = ("TeamPages",)

Short = Annotated[str, msgspec.Meta(max_length=300)]
Form = Body(media_type=RequestEncodingType.URL_ENCODED)


class InviteForm(msgspec.Struct, frozen=True, kw_only=True):
    name: Short = ""
    email: Short = ""


class EmptyForm(msgspec.Struct, frozen=True, kw_only=True):
    """Buttons that only carry the CSRF token."""


async def _people_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Accounts are managed by a signed-in person, never with an API token."""
    if connection.scope.get("user") is None or connection.scope["user"].kind != "provider-staff":
        raise NotAuthorizedException("sign in first")


class TeamPages(Controller):
    path = "/coach/team"
    include_in_schema = False
    guards = [requires("coach"), _people_only]
    exception_handlers = {NotAuthorizedException: to_login}

    @get("/")
    async def team_page(self, request: Request[Any, Any, Any], rt: NamedDependency[Runtime],
                        done: FromQuery[str | None] = None) -> Template:
        return await _team_page(rt, principal(request), done=done)

    @post("/")
    async def invite(self, request: Request[Any, Any, Any], data: Annotated[InviteForm, Form],
                     rt: NamedDependency[Runtime]) -> Template | Redirect:
        who = principal(request)
        try:
            await run_in_transaction(rt.sessionmaker, lambda s: staff.invite(
                s, rt, provider_id=who.provider_id or 0, email=data.email, name=data.name,
                invited_by=who.name.partition(" (")[0]))
        except DomainError as exc:
            return await _team_page(rt, who, values=msgspec.structs.asdict(data), errors=errors_of(exc),
                                    status_code=status(exc))
        return Redirect("/coach/team?done=invited", status_code=303, headers=NO_STORE)

    @post("/{user_id:int}/remove")
    async def remove(self, request: Request[Any, Any, Any], user_id: FromPath[int], data: Annotated[EmptyForm, Form],
                     rt: NamedDependency[Runtime]) -> Template | Redirect:
        who = principal(request)
        try:
            await run_in_transaction(rt.sessionmaker, lambda s: staff.remove(
                s, provider_id=who.provider_id or 0, user_id=user_id, removed_by=who.subject_id))
        except DomainError as exc:
            return await _team_page(rt, who, failed=(user_id, errors_of(exc)), status_code=status(exc))
        return Redirect("/coach/team?done=removed", status_code=303, headers=NO_STORE)


async def _team_page(rt: Runtime, who: Principal, *, done: str | None = None, values: dict[str, Any] | None = None,
                     errors: dict[str, str] | None = None, failed: tuple[int, dict[str, str]] | None = None,
                     status_code: int = 200) -> Template:
    async with rt.reader() as session:
        members = await staff.team(session, who.provider_id or 0)
    return page("coach/team.html", status=status_code, members=members, done=done, values=values or {},
                errors=errors or {}, failed=failed, who=who)
