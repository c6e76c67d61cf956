"""Shared helpers for browser tests: headless Chromium, no outside requests, axe-core.

Use them from any test module (the public site here, the app's pages elsewhere):

    with chromium() as context, guarded_page(context, viewport=PHONE) as page:
        page.goto(url)
        assert_accessible(page, "site/nl-home-phone")

Without Chromium, Playwright or axe-core the tests are skipped with the reason,
unless VOUCHERS_REQUIRE_BROWSER=1 (as in CI), where that is a failure instead.
These helpers use Playwright's sync API: call them from sync tests.
"""

import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from socketserver import BaseServer
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:  # playwright is imported only once require_browser() found it
    from playwright.sync_api import BrowserContext, Page

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ARTIFACTS = ROOT / "build" / "test-artifacts"
DESKTOP = (1280, 800)
PHONE = (390, 844)
SCREENSHOT_HEIGHT = 4000
WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    # Without these Chromium phones home, which the request guard would report.
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def axe_path() -> Path:
    """axe.min.js from the npm package axe-core (CI: npm install --prefix build/node axe-core@4)."""
    default = ROOT / "build" / "node" / "node_modules" / "axe-core" / "axe.min.js"
    return Path(os.environ.get("AXE_CORE_JS", default))


def require_browser() -> None:
    """Skip when a browser-test tool is missing, or fail if the run demands browsers."""
    missing = []
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("Python package playwright (pip install playwright)")
    if not axe_path().is_file():
        missing.append(f"axe-core at {axe_path()} (npm install --prefix build/node axe-core@4, or set AXE_CORE_JS)")
    if not missing:
        return
    reason = "browser test needs: " + "; ".join(missing)
    if os.environ.get("VOUCHERS_REQUIRE_BROWSER") == "1":
        pytest.fail(reason + " (VOUCHERS_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


@contextmanager
def chromium() -> Iterator["BrowserContext"]:
    """A headless Chromium with a fresh, throw-away profile (never `playwright install`)."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="vouchers-chromium-") as profile:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield context
        finally:
            context.close()


@contextmanager
def guarded_page(
    context: "BrowserContext",
    *,
    viewport: tuple[int, int] = DESKTOP,
    allowed_hosts: tuple[str, ...] = ("127.0.0.1",),
) -> Iterator["Page"]:
    """A page that blocks every request to another host and fails the test, on leaving
    the block, if any was tried or if the page's JavaScript threw an error.

    Blocking (not just recording) keeps the test offline and shows what a visitor's
    browser would have sent to a third party, which the AVG forbids here.
    """
    page = context.new_page()
    page.set_viewport_size({"width": viewport[0], "height": viewport[1]})
    outside: list[str] = []
    errors: list[str] = []

    def guard(route) -> None:
        url = route.request.url
        if urlsplit(url).scheme in ("data", "blob") or urlsplit(url).hostname in allowed_hosts:
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    page.route("**/*", guard)
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        page.close()
    assert not outside, "requests to outside hosts were tried:\n" + "\n".join(sorted(set(outside)))
    assert not errors, "JavaScript errors on the page:\n" + "\n".join(errors)


def assert_accessible(page: "Page", name: str) -> None:
    """Run axe-core's WCAG 2.1 A and AA rules on the page as it is now, save a
    screenshot as build/test-artifacts/<name>.png, and fail listing each violation."""
    screenshot(page, name)
    # evaluate() is not subject to the page's Content-Security-Policy, unlike a script tag.
    page.evaluate(axe_path().read_text(encoding="utf-8") + "\n;0")
    violations = page.evaluate(
        "tags => axe.run(document, {runOnly: {type: 'tag', values: tags}}).then(r => r.violations)",
        WCAG_TAGS,
    )
    assert not violations, f"axe-core: {name} ({page.url}) fails WCAG 2.1 AA:\n{describe(violations)}"


def screenshot(page: "Page", name: str) -> Path:
    """Save the page's top SCREENSHOT_HEIGHT pixels (the whole page when shorter);
    capturing a very long page in full takes seconds and adds little for review."""
    shot = ARTIFACTS / (re.sub(r"[^A-Za-z0-9._/-]", "-", name) + ".png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    width, height = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
    clip = {"x": 0, "y": 0, "width": width, "height": min(height, SCREENSHOT_HEIGHT)}
    page.screenshot(path=str(shot), full_page=True, clip=clip)
    return shot


def describe(violations: list[dict]) -> str:
    """axe's result as a short readable list: rule, impact, help and the failing nodes."""
    lines = []
    for v in violations:
        lines.append(f"- {v['id']} ({v.get('impact')}): {v['help']} <{v['helpUrl']}>")
        for node in v["nodes"][:5]:
            lines.append(f"    at {json.dumps(node['target'])}: {node.get('failureSummary', '').strip()}")
        if len(v["nodes"]) > 5:
            lines.append(f"    ... and {len(v['nodes']) - 5} more")
    return "\n".join(lines)


@contextmanager
def serve_in_thread(server: BaseServer) -> Iterator[str]:
    """Run an HTTP server (e.g. http.server on port 0) in a thread; yield its base URL."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield f"http://{host}:{port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
