"""The trade-register interface: the KvK basisprofiel API client against a fake KvK server on
127.0.0.1, the CSV extract, and the demo extract that ``make run`` uses."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from service.demo import DEMO_KVK
from service.models import utcnow
from service.registry import FileRegistry, KvkApiRegistry, RegistryRecord, RegistryUnavailable
from service.settings import DEMO_EXTRACT
from service.validity import local_day

API_KEY = "test-api-key"

PROFILE = {
    "kvkNummer": "69599084",
    "naam": "Test EMZ Dagobert",
    "totaalWerkzamePersonen": 4,
    "materieleRegistratie": {"datumAanvang": "20150101"},
    "_embedded": {
        "hoofdvestiging": {
            "vestigingsnummer": "000038509490",
            "adressen": [
                {"type": "postadres", "postcode": "6800AA", "plaats": "Arnhem"},
                {"type": "bezoekadres", "straatnaam": "Koningstraat", "postcode": "6811DG", "plaats": "Arnhem"},
            ],
        }
    },
}


class FakeKvk:
    """Answers like the KvK API; ``routes`` maps a path to (status, body) or a delay in seconds."""

    def __init__(self) -> None:
        self.routes: dict[str, Any] = {}
        self.requests: list[tuple[str, str | None]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                fake.requests.append((self.path, self.headers.get("apikey")))
                if self.headers.get("apikey") != API_KEY:
                    return self._send(401, {"fout": [{"code": "IPD0001", "omschrijving": "no key"}]})
                route = fake.routes.get(self.path.split("?")[0], (404, {"fout": [{"code": "IPD0004"}]}))
                if isinstance(route, float):
                    time.sleep(route)
                    route = (200, PROFILE)
                self._send(*route)

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode() if not isinstance(body, bytes) else body
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (the timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1"


@pytest.fixture
def kvk() -> Iterator[FakeKvk]:
    fake = FakeKvk()
    thread = threading.Thread(target=fake.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
    thread.join()


def client(kvk: FakeKvk, **kwargs: Any) -> KvkApiRegistry:
    return KvkApiRegistry(kvk.url, API_KEY, timeout=kwargs.pop("timeout", 2.0), **kwargs)


async def test_basisprofiel_is_read(kvk: FakeKvk) -> None:
    kvk.routes["/api/v1/basisprofielen/69599084"] = (200, PROFILE)
    record = await client(kvk).lookup("69599084")
    assert record == RegistryRecord(kvk_number="69599084", name="Test EMZ Dagobert", employees=4,
                                    postcode="6811 DG", active=True, extracted_on=local_day(utcnow()))
    assert kvk.requests == [("/api/v1/basisprofielen/69599084", API_KEY)]


async def test_main_establishment_is_fetched_when_not_embedded(kvk: FakeKvk) -> None:
    profile = {k: v for k, v in PROFILE.items() if k != "_embedded"}
    kvk.routes["/api/v1/basisprofielen/69599084"] = (200, {**profile, "materieleRegistratie": {"datumEinde": "20240101"}})
    kvk.routes["/api/v1/basisprofielen/69599084/hoofdvestiging"] = (200, PROFILE["_embedded"]["hoofdvestiging"])
    record = await client(kvk).lookup("69599084")
    assert record is not None and record.postcode == "6811 DG" and record.active is False


async def test_unknown_number_is_not_found(kvk: FakeKvk) -> None:
    assert await client(kvk).lookup("12345678") is None


@pytest.mark.parametrize("status", [500, 503, 429, 401])
async def test_server_errors_mean_unavailable_not_an_answer(kvk: FakeKvk, status: int) -> None:
    kvk.routes["/api/v1/basisprofielen/69599084"] = (status, {"fout": []})
    with pytest.raises(RegistryUnavailable):
        await client(kvk).lookup("69599084")


async def test_timeout_and_refused_connection_mean_unavailable(kvk: FakeKvk) -> None:
    kvk.routes["/api/v1/basisprofielen/69599084"] = 0.5
    with pytest.raises(RegistryUnavailable):
        await client(kvk, timeout=0.1).lookup("69599084")
    with pytest.raises(RegistryUnavailable):
        await KvkApiRegistry("http://127.0.0.1:9/api/v1", API_KEY, timeout=0.5).lookup("69599084")


async def test_not_json_means_unavailable(kvk: FakeKvk) -> None:
    kvk.routes["/api/v1/basisprofielen/69599084"] = (200, b"<html>maintenance</html>")
    with pytest.raises(RegistryUnavailable):
        await client(kvk).lookup("69599084")


async def test_file_registry(tmp_path: Path) -> None:
    extract = tmp_path / "kvk.csv"
    extract.write_text("kvk_number,name,employees,postcode,active\n12345678,A,3,6811ab,yes\n23456789,B,,,no\n")
    moment = dt.datetime(2026, 11, 30, 23, 30, tzinfo=dt.UTC)  # 1 December in Arnhem
    os.utime(extract, (moment.timestamp(), moment.timestamp()))
    registry = FileRegistry(extract)
    day = dt.date(2026, 12, 1)  # the extract's date is the file's
    assert await registry.lookup("12345678") == RegistryRecord(kvk_number="12345678", name="A", employees=3,
                                                               postcode="6811 AB", active=True, extracted_on=day)
    assert await registry.lookup("23456789") == RegistryRecord(kvk_number="23456789", name="B", employees=None,
                                                               postcode=None, active=False, extracted_on=day)
    assert registry.extracted_on == day
    assert await registry.lookup("99999999") is None
    extract.unlink()
    with pytest.raises(RegistryUnavailable):
        await FileRegistry(extract).lookup("12345678")


async def test_demo_extract_has_the_demo_numbers() -> None:
    registry = FileRegistry(DEMO_EXTRACT)
    for kvk in [DEMO_KVK, "91000000", "91000001", "91000002"]:
        record = await registry.lookup(kvk)
        assert record is not None and record.active and record.postcode and record.postcode.startswith("681")


async def test_application_waits_for_the_kvk_api_and_is_decided_on_its_figures(kvk: FakeKvk, rt, smtp_server) -> None:
    from sqlalchemy import select

    from service import applications, outbox
    from service.db import run_in_transaction
    from service.models import Application, Scheme
    from service.registry import check_application, retry_pending
    from tests.helpers import applicant, make_scheme

    scheme = await make_scheme(rt, eligibility={"max_employees": 3, "postcodes": ["6811-6846"]})

    async def submit(session):  # type: ignore[no-untyped-def]
        application = await applications.submit(
            session, await session.get_one(Scheme, scheme.id), applicant(kvk_number="69599084", employees=1))
        application.status = "registry_pending"  # as after confirming the address
        return application.id

    application_id = await run_in_transaction(rt.sessionmaker, submit)
    kvk.routes["/api/v1/basisprofielen/69599084"] = (503, {})
    assert await check_application(rt, application_id, client(kvk)) == "registry_pending"
    assert (await retry_pending(rt, client(kvk))).still_pending == 1
    kvk.routes["/api/v1/basisprofielen/69599084"] = (200, PROFILE)
    assert (await retry_pending(rt, client(kvk))).decided == 1
    async with rt.sessionmaker() as session:
        application = await session.scalar(select(Application).where(Application.id == application_id))
    # The applicant said 1 person; the register says 4, more than this scheme's 3.
    assert application.status == "rejected" and application.reasons == ["too-many-employees"]
    assert application.registry_employees == 4 and application.registry_postcode == "6811 DG"
    await outbox.send_due(rt)
    assert [m["Subject"] for m in smtp_server.messages][-1].startswith("Uw aanvraag")


def test_cli_retries_applications_waiting_for_the_register(rt, monkeypatch) -> None:
    from click.testing import CliRunner

    from service.cli import main
    from tests.conftest import settings_env

    for name, value in settings_env(rt.settings).items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["registry", "retry"])
    assert result.exit_code == 0, result.output
    assert "decided 0, still waiting 0" in result.output


def test_settings_choose_the_register(tmp_path: Path) -> None:
    from service.registry import registry_for
    from service.settings import ConfigError, Settings

    assert isinstance(registry_for(Settings(environment="test")), FileRegistry)
    chosen = registry_for(Settings(environment="test", registry="kvk", kvk_api_url="http://127.0.0.1:1/api/v1",
                                   kvk_api_key="k"))
    assert isinstance(chosen, KvkApiRegistry) and chosen.base_url == "http://127.0.0.1:1/api/v1"
    with pytest.raises(ConfigError, match="VOUCHERS_KVK_API_KEY"):
        Settings.from_env({"VOUCHERS_REGISTRY": "kvk"})
