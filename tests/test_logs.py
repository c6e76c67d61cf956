"""Logs: one structured line per request and per background job, with the request id the answer
carries, and never a code, token or e-mail address, in JSON and in plain text."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from service import logs, worker
from service.settings import Settings
from tests.helpers import bearer, make_provider, make_scheme, make_voucher

EMAIL = "fatima@bakkerij.example"


@pytest.fixture
def service_logger() -> Iterator[None]:
    """``logs.configure`` changes the service's logger; put it back for the other tests."""
    logger, alembic = logging.getLogger("service"), logging.getLogger("alembic")
    handlers, level, propagate, alembic_level = list(logger.handlers), logger.level, logger.propagate, alembic.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate
    alembic.setLevel(alembic_level)


def rendered(records: list[logging.LogRecord]) -> str:
    """The service's records as both formatters write them (the test client logs URLs itself)."""
    return "\n".join(f.format(r) for r in records for f in (logs.JsonFormatter(), logs.PlainFormatter())
                     if r.name.startswith("service"))


async def test_one_line_per_request_with_its_id_and_no_personal_values(client, rt, caplog) -> None:
    scheme = await make_scheme(rt)
    _voucher, code = await make_voucher(rt, scheme, email=EMAIL)
    _provider, token = await make_provider(rt, scheme)
    with caplog.at_level(logging.INFO, logger="service"):
        looked = await client.get(f"/api/v1/vouchers/{code}?email={EMAIL}", headers=bearer(token))
        redeemed = await client.post(f"/api/v1/vouchers/{code}/redemptions", headers=bearer(token),
                                     json={"amount_cents": 100, "category": "coaching", "reference": EMAIL})
        refused = await client.get(f"/api/v1/vouchers/{code}", headers=bearer(token + "x"))
        missing = await client.get(f"/nergens/{EMAIL}/{code}")
        page = await client.get("/?lang=en", headers={"Accept": "text/html"})
    assert (looked.status_code, redeemed.status_code, refused.status_code, missing.status_code,
            page.status_code) == (200, 201, 401, 404, 200)
    lines = [json.loads(logs.JsonFormatter().format(r)) for r in caplog.records if r.name == "service.requests"]
    assert [line["status"] for line in lines] == [200, 201, 401, 404, 200]
    for line, answer in zip(lines, (looked, redeemed, refused, missing, page), strict=True):
        assert line["event"] == "request" and line["request_id"] == answer.headers["x-request-id"]
        assert line["duration_ms"] >= 0 and line["level"] == "INFO" and "time" in line
    assert [line["route"] for line in lines] == ["/api/v1/vouchers/{code}", "/api/v1/vouchers/{code}/redemptions",
                                                 "/api/v1/vouchers/{code}", "(no route)", "/"]
    assert [line["actor"] for line in lines] == ["token", "token", "anonymous", "anonymous", "anonymous"]
    written = rendered(caplog.records)
    for value in (code, code.replace("-", ""), token, EMAIL, "fatima", "bakkerij"):
        assert value.lower() not in written.lower(), value
    assert "127.0.0.1" not in written and "testclient" not in written


async def test_a_background_job_writes_one_line_and_a_failure_without_its_message(caplog) -> None:
    async def sent_three() -> int:
        return 3

    async def nothing() -> int:
        return 0

    async def broken() -> None:
        raise RuntimeError(f"could not send to {EMAIL}")

    with caplog.at_level(logging.DEBUG, logger="service.worker"):
        for work, name in ((sent_three, "outbox"), (nothing, "audit seal"), (broken, "sweep")):
            await worker._run_job(work, name)
    sent, idle, failed = [json.loads(logs.JsonFormatter().format(r)) for r in caplog.records]
    assert (sent["level"], sent["event"], sent["job"], sent["status"], sent["done"]) == ("INFO", "job", "outbox", "ok", 3)
    assert sent["actor"] == "system" and len(sent["request_id"]) == 16 and sent["duration_ms"] >= 0
    assert idle["level"] == "DEBUG" and idle["done"] == 0
    assert (failed["level"], failed["status"], failed["error"]) == ("ERROR", "failed", ["RuntimeError"])
    assert any("test_logs.py" in frame and "broken" in frame for frame in failed["traceback"])
    assert EMAIL not in rendered(caplog.records)


def test_level_and_format_come_from_the_settings(service_logger) -> None:
    out = io.StringIO()
    logs.configure(Settings.from_env({"VOUCHERS_LOG_FORMAT": "plain", "VOUCHERS_LOG_LEVEL": "WARNING"}), out)
    log = logging.getLogger("service.requests")
    logs.event(log, logging.INFO, "request", route="/", status=200)
    logs.event(log, logging.WARNING, "request", route="/v/{code}", status=500, request_id="abc")
    logging.getLogger("service.worker").warning("the background process ended with %s", -9)
    line, sentence = out.getvalue().splitlines()
    assert line.endswith("WARNING request route=/v/{code} status=500 request_id=abc")
    assert sentence.endswith("WARNING service.worker: the background process ended with -9")

    out = io.StringIO()
    logs.configure(Settings.from_env({}), out)
    logs.event(log, logging.INFO, "request", route="/", status=200)
    logging.getLogger("service.worker").error("the background process ended with %s", -9)
    first, second = [json.loads(line) for line in out.getvalue().splitlines()]
    assert (first["level"], first["logger"], first["route"]) == ("INFO", "service.requests", "/")
    assert second == {**second, "event": "message", "message": "the background process ended with -9"}
    with pytest.raises(Exception, match="VOUCHERS_LOG_FORMAT"):
        Settings.from_env({"VOUCHERS_LOG_FORMAT": "xml"})


async def test_a_made_up_method_is_logged_and_counted_as_other(client, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="service.requests"):
        answer = await client.request("BREW-fatima", "/healthz")
    assert answer.status_code in (404, 405)
    [line] = [json.loads(r.getMessage()) for r in caplog.records if r.name == "service.requests"]
    assert line["method"] == "other" and "fatima" not in rendered(caplog.records)


async def test_a_mail_server_that_names_the_address_is_not_quoted(rt, caplog, monkeypatch) -> None:
    from service import outbox

    scheme = await make_scheme(rt)
    await make_voucher(rt, scheme, email=EMAIL)

    async def refuse(self: object, message: object, mime: object) -> None:
        raise RuntimeError(f"550 5.1.1 <{EMAIL}>: Recipient address rejected")

    monkeypatch.setattr(outbox._MailServer, "deliver", refuse)
    with caplog.at_level(logging.INFO, logger="service"):
        await outbox.send_due(rt)
    lines = [json.loads(logs.JsonFormatter().format(r)) for r in caplog.records if r.name == "service.outbox"]
    assert lines and all(line["event"] == "mail_not_sent" and line["error"] == ["RuntimeError"] for line in lines)
    assert EMAIL not in rendered(caplog.records)
