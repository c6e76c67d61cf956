"""What a journey needs: the service as production runs it, the operator's command line, the mail
that arrives at the loopback SMTP server, and one browser per person.

- ``Service`` starts ``vouchers serve`` (web process plus the background process that sends mail,
  sweeps and seals the audit log) on a port chosen before the settings are made, so that links
  in mail point at it, and runs ``vouchers ...`` commands as an operator would.
- ``Person`` is a browser of its own (own cookies) at a phone's or a desktop's width. Every page it
  comes to is checked with axe-core before the journey goes on: ``Person.check`` runs it, and
  ``Person.unchecked`` lists the pages it came to that were not checked; ``Journey.step`` fails a
  step that left one.
- ``Journey.step`` names the step in a failure, with a screenshot of every person's page.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from email.header import decode_header, make_header
from email.message import Message
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from tests.browser import CHROMIUM, CHROMIUM_ARGS, assert_accessible, guarded_page, screenshot
from tests.conftest import ROOT, SmtpSink, settings_env

if TYPE_CHECKING:
    from playwright.sync_api import Page, Playwright

    from service.settings import Settings

__all__ = ("Journey", "Person", "Service", "mail_body", "mail_links", "mail_subject")


class Service:
    """The service on one port, with its background process, and its command line."""

    def __init__(self, settings: Settings, port: int, workdir: Path) -> None:
        self.settings = settings
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.workdir = workdir
        self.env = {**os.environ, **settings_env(settings)}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port), "--workers", "1"],
            cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            if self.process.poll() is not None:
                raise RuntimeError(f"the server stopped:\n{self.output()}")
            time.sleep(0.2)
        raise RuntimeError(f"the server did not answer within 30 s:\n{self.output()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        self.log.close()

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-5000:]

    def cli(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``vouchers <args>`` as the operator types it, in a scratch directory."""
        done = subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=self.workdir,
                              env={**self.env, "PYTHONPATH": str(ROOT), **(env or {})},
                              capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise AssertionError(f"vouchers {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done


class Person:
    """One person's browser: its own profile, cookies and width."""

    def __init__(self, name: str, page: Page, service_url: str) -> None:
        self.name = name
        self.page = page
        self.service_url = service_url
        self.visited: list[str] = []
        self.checked: set[str] = set()
        page.set_default_timeout(15_000)
        page.on("framenavigated", lambda frame: frame == page.main_frame and self.visited.append(frame.url))

    def goto(self, url: str) -> None:
        self.page.goto(url if "://" in url else self.service_url + url)

    def check(self, label: str) -> None:
        """axe-core on the page as it is now (WCAG 2.1 A and AA), and a screenshot."""
        self.page.wait_for_load_state()
        assert_accessible(self.page, f"journeys/{label}")
        self.checked.add(_page_of(self.page.url))

    def unchecked(self) -> list[str]:
        return sorted({_page_of(u) for u in self.visited} - self.checked - {"about:blank"})

    def text(self, selector: str = "main") -> str:
        """The visible text, with non-breaking spaces as spaces (money is written "€ 1.350,00")."""
        return self.page.inner_text(selector).replace("\u00a0", " ")

    def click(self, role: str, name: str, *, exact: bool = False) -> None:
        self.page.get_by_role(role, name=name, exact=exact).click()  # type: ignore[arg-type]

    def fill(self, label: str, value: str, *, exact: bool = False) -> None:
        self.page.get_by_label(label, exact=exact).fill(value)


def _page_of(url: str) -> str:
    """A page as axe sees it: the address without its fragment."""
    return url.split("#", 1)[0]


class Journey:
    """The service, its mail, its command line and the people in the journey."""

    def __init__(self, service: Service, smtp: SmtpSink, playwright: Playwright, stack: ExitStack,
                 profiles: Path) -> None:
        self.service = service
        self.smtp = smtp
        self.playwright = playwright
        self.stack = stack
        self.profiles = profiles
        self.people: dict[str, Person] = {}
        self.seen_mail = 0

    def person(self, name: str, viewport: tuple[int, int]) -> Person:
        context = self.stack.enter_context(_closing(self.playwright.chromium.launch_persistent_context(
            str(self.profiles / name), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)))
        page = self.stack.enter_context(guarded_page(context, viewport=viewport))
        person = Person(name, page, self.service.url)
        self.people[name] = person
        return person

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """One step of the journey: a failure says which, with screenshots of every page open."""
        try:
            yield
            for person in self.people.values():
                left = person.unchecked()
                assert not left, f"{person.name} came to pages that axe-core did not check: {left}"
        except BaseException as exc:
            shots = []
            for person in self.people.values():
                with contextlib.suppress(Exception):
                    shots.append(str(screenshot(person.page, f"journeys/failed/{person.name}")))
            raise AssertionError(f"journey step '{name}' failed: {exc}\nscreenshots: {shots}\n"
                                 f"server log (end):\n{self.service.output()[-2000:]}") from exc

    def mail(self, to: str, subject: str, *, timeout: float = 20.0) -> Message:
        """The newest mail to ``to`` whose subject contains ``subject``, waiting for the background
        process to send it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in reversed(self.smtp.messages):
                if message["To"] == to and subject.lower() in mail_subject(message).lower():
                    return message
            time.sleep(0.2)
        seen = [(m["To"], mail_subject(m)) for m in self.smtp.messages]
        raise AssertionError(f"no mail to {to} about {subject!r} within {timeout} s; mail so far: {seen}")

    def link(self, message: Message, contains: str) -> str:
        """The first link in a mail whose address contains ``contains``; it must point at the service."""
        for url in mail_links(message):
            if contains in url:
                assert url.startswith(self.service.url), f"a mail links to {url}, not to {self.service.url}"
                return url
        raise AssertionError(f"no link with {contains!r} in:\n{mail_body(message)}")


@contextmanager
def _closing(context: Any) -> Iterator[Any]:
    try:
        yield context
    finally:
        context.close()


def mail_subject(message: Message) -> str:
    """The subject as the reader sees it (encoded words decoded, folding undone)."""
    return str(make_header(decode_header(message["Subject"]))).replace("\u00a0", " ")


def mail_body(message: Message) -> str:
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


def mail_links(message: Message) -> list[str]:
    return re.findall(r"https?://[^\s<>\"]+", mail_body(message))
