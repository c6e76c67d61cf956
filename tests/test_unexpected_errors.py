"""An unexpected failure answers in the service's own shape (a problem for the API, the error page
for pages), carries a request id, and leaves one log line an operator can find by that id, without
the personal values that were in play."""

from __future__ import annotations

import json
import logging

import pytest

from service import schemes
from tests.helpers import make_scheme

SECRET = "fatima@bakkerij.example ABCD-EFGH-JKMN"


@pytest.fixture
def failing_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"could not summarise for {SECRET}")

    monkeypatch.setattr(schemes, "summary", broken)


def failure_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "service.problems"]


async def test_a_page_that_fails_shows_the_error_page_with_a_reference(client, rt, failing_summary, caplog) -> None:
    await make_scheme(rt)
    with caplog.at_level(logging.ERROR, logger="service.problems"):
        r = await client.get("/?lang=nl", headers={"Accept": "text/html"})
    assert r.status_code == 500
    assert r.headers["content-type"].startswith("text/html")
    request_id = r.headers["x-request-id"]
    assert "Er ging bij ons iets mis" in r.text and request_id in r.text
    assert "status_code" not in r.text  # not the framework's bare answer
    [line] = failure_lines(caplog)
    assert line["request_id"] == request_id
    assert line["route"] == "/" and line["method"] == "GET"
    assert line["error"] == ["RuntimeError"]
    assert any("test_unexpected_errors.py" in frame for frame in line["traceback"])  # type: ignore[union-attr]
    assert "fatima" not in caplog.text and "ABCD" not in caplog.text


async def test_an_api_call_that_fails_answers_a_problem_with_the_request_id(client, rt, failing_summary,
                                                                             caplog) -> None:
    scheme = await make_scheme(rt)
    with caplog.at_level(logging.ERROR, logger="service.problems"):
        r = await client.get(f"/api/v1/schemes/{scheme.slug}")
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["code"] == "internal-error" and body["request_id"] == r.headers["x-request-id"]
    [line] = failure_lines(caplog)
    assert line["route"] == "/api/v1/schemes/{slug}"  # the template, not the path with its values
    assert scheme.slug not in json.dumps(line)
    assert "fatima" not in caplog.text


async def test_every_answer_carries_a_request_id(client) -> None:
    first = await client.get("/healthz")
    second = await client.get("/healthz")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert len((await client.get("/no-such-page")).headers["x-request-id"]) == 16
