"""What the entrepreneur's pages share: how a page is made, with what every template expects
(the language, the spend categories' and rejection reasons' labels). Its own module so that the
eHerkenning pages and the other entrepreneur pages both use it without importing each other."""

from __future__ import annotations

from typing import Any

from litestar.response import Template

from .. import i18n
from ..errors import N_, REJECTION_REASONS

__all__ = ("CATEGORY_LABELS", "entrepreneur_page")

CATEGORY_LABELS = {
    "coaching": N_("Coaching"),
    "retraining": N_("Retraining or further training"),
    "financial_advice": N_("Financial advice"),
}


def entrepreneur_page(name: str, status_code: int = 200, headers: dict[str, str] | None = None, **context: Any) -> Template:
    context.setdefault("locale", i18n.current_locale())
    context.setdefault("category_labels", CATEGORY_LABELS)
    context.setdefault("reason_texts", REJECTION_REASONS)
    return Template(f"entrepreneur/{name}.html", context=context, status_code=status_code, headers=headers or {})
