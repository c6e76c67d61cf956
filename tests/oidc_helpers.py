"""Going through the development broker's page as a person would, without a browser."""

from __future__ import annotations

import html
import re

import httpx

__all__ = ("broker_answer",)


def broker_answer(authorize_url: str, *, decision: str = "allow", **choices: str) -> str:
    """Open the broker's page at ``authorize_url``, choose (``kvk``, ``level``, ``person``,
    ``branch``, ``fault``; ``email``, ``name``, ``groups`` for staff) and return where the broker
    sends the browser back to."""
    page = httpx.get(authorize_url, timeout=10)
    assert page.status_code == 200, page.text
    assert 'class="dev" role="note"' in page.text  # marked as the development broker, in either language
    hidden = {k: html.unescape(v) for k, v in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"',
                                                         page.text)}
    base = authorize_url.split("/authorize", 1)[0]
    answer = httpx.post(base + "/authorize", data={**hidden, "decision": decision, **choices}, timeout=30)
    assert answer.status_code in (302, 303), answer.text
    return answer.headers["location"]
