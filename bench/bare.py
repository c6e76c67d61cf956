"""The yardsticks: a bare Litestar JSON endpoint (GET and a small POST), a bare Jinja page (GET
``/bare/page``: one template with a dozen values, a loop and a form, through Litestar's ``Template``
response) and a bare form POST (``/bare/form``: a URL-encoded body decoded into a msgspec Struct,
answered 303 as the service's forms are), served exactly like the service (granian, ASGI, same
worker count, access log off). Every benchmark figure is also given as a ratio to one of them,
because the machine is shared and noisy while the ratio holds. No session, no CSRF check and no
database: what Litestar and Jinja alone cost for a page and a form.

Run: ``python -m bench.bare --port 8100 --workers 2``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from litestar import Litestar, get, post
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect, Template
from litestar.template.config import TemplateConfig


class SmallIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    amount_cents: int
    category: Literal["coaching", "retraining", "financial_advice"]
    reference: str


class SmallOut(msgspec.Struct, frozen=True):
    ok: bool
    amount_cents: int
    reference: str


@get("/bare")
async def bare_get() -> dict[str, str]:
    return {"status": "ok"}


@post("/bare")
async def bare_post(data: SmallIn) -> SmallOut:
    return SmallOut(ok=True, amount_cents=data.amount_cents, reference=data.reference)


class SmallForm(msgspec.Struct, frozen=True, kw_only=True):
    amount: str = ""
    category: str = ""
    reference: str = ""
    key: str = ""


FACTS = [("Bedrijf", "Bakkerij 12"), ("Saldo", "€ 1.350,00"), ("Geldig tot en met", "30 november 2027"),
         ("Regeling", "Ondernemersvoucher Arnhem")]
OPTIONS = [("coaching", "Coaching"), ("retraining", "Bij- en omscholing"), ("financial_advice", "Financieel advies")]


@get("/bare/page")
async def bare_page() -> Template:
    return Template("bare_page.html", context={
        "title": "Voucher", "site": "Ondernemersvoucher", "company": "Bakkerij 12", "status": "Geldig",
        "facts": FACTS, "options": OPTIONS, "key": "k3y", "footer": "Gemeente Arnhem"},
        headers={"Cache-Control": "no-store"})


@post("/bare/form")
async def bare_form(data: Annotated[SmallForm, Body(media_type=RequestEncodingType.URL_ENCODED)]) -> Redirect:
    return Redirect(f"/bare/page?done={len(data.reference)}", status_code=303, headers={"Cache-Control": "no-store"})


@get("/healthz")
async def health() -> dict[str, str]:
    return {"status": "ok"}


app = Litestar(route_handlers=[bare_get, bare_post, bare_page, bare_form, health], debug=False,
              template_config=TemplateConfig(directory=Path(__file__).with_name("templates"),
                                             engine=JinjaTemplateEngine))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    from granian import Granian
    from granian.constants import Interfaces

    # The same call as ``vouchers serve`` (service/cli.py).
    Granian("bench.bare:app", address=args.host, port=args.port, workers=args.workers,
            interface=Interfaces.ASGI, log_access=False).serve()


if __name__ == "__main__":
    main()
