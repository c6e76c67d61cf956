"""Fixtures for the journeys: the service started as production starts it, on both databases."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import msgspec
import pytest

from service.settings import Settings
from tests.browser import require_browser
from tests.conftest import SmtpSink, free_port
from tests.journeys.harness import Journey, Service

#: The trade register as the journey's firms are in it (the "file" registry reads this extract).
REGISTER = """kvk_number,name,employees,postcode,active
30000001,Bakkerij Het Zuiden,3,6811 AB,yes
30000002,Translation Bureau Sonsbeek,2,6814 AH,yes
30000003,Groothandel Velperpoort,25,6811 AB,yes
30000004,Fietsenmaker Klarendal,1,6822 BA,yes
40000001,Loopbaanpraktijk Rijn,4,6811 CD,yes
"""


@pytest.fixture
def journey(settings: Settings, smtp_server: SmtpSink, tmp_path: Path) -> Iterator[Journey]:
    require_browser()
    from playwright.sync_api import sync_playwright

    register = tmp_path / "kvk.csv"
    register.write_text(REGISTER, encoding="utf-8")
    port = free_port()
    settings = msgspec.structs.replace(
        settings,
        base_url=f"http://127.0.0.1:{port}",
        registry_file=str(register),
        background_tasks=True,
        outbox_interval_seconds=0.3,
        sweep_interval_seconds=1.0,
    )
    workdir = tmp_path / "operator"
    workdir.mkdir()
    service = Service(settings, port, workdir)
    # Left in reverse order: the browsers close (and the service stops) before their profiles go.
    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="vouchers-journey-") as profiles, \
            ExitStack() as stack:
        stack.callback(service.stop)
        yield Journey(service, smtp_server, playwright, stack, Path(profiles))
