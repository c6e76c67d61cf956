"""The public site stays current by itself: the background process rebuilds it when a public
figure changes, swaps builds in atomically, keeps the previous one for a rollback, and only one
process of several builds. ``vouchers site publish`` copies the live site elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from service import lease, vouchers
from service.db import run_in_transaction
from service.models import Voucher
from service.runtime import Runtime
from service.sitegen import build_site, live, site_server
from service.sitegen.keeper import Keeper, fingerprint
from tests.browser import serve_in_thread
from tests.conftest import ROOT, settings_env
from tests.helpers import make_provider, make_scheme, make_voucher
from tests.site_snapshot import first_come_scheme, make_snapshot

SCHEME_PAGE = "regelingen/test-scheme/index.html"
READER_PAGES = ("", "en/", "regelingen/test-scheme/", "en/regelingen/test-scheme/", "aanbieders/", "contact/")


def fake_build(folder: Path, text: str, extra: dict[str, str] | None = None) -> Path:
    """A finished build without mkdocs, for the tests of the folder handling."""
    folder.mkdir(parents=True)
    (folder / "index.html").write_text(f"<html>{text}</html>\n")
    for name, content in (extra or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(content)
    return folder


def live_text(site_dir: Path, path: str = "index.html") -> str:
    return (site_dir / "current" / path).read_text()


# --- the site folder: swap, rollback, prune ----------------------------------------------------

def test_a_swap_keeps_the_previous_build_and_removes_older_ones(tmp_path: Path) -> None:
    site = tmp_path / "site"
    first = fake_build(live.new_release(site, "a" * 64), "one")
    live.swap_in(site, first, "a" * 64)
    assert live_text(site) == "<html>one</html>\n" and live.current_fingerprint(site) == "a" * 64
    second = fake_build(live.new_release(site, "b" * 64), "two")
    live.swap_in(site, second, "b" * 64)
    third = fake_build(live.new_release(site, "c" * 64), "three")
    live.swap_in(site, third, "c" * 64)
    assert live_text(site) == "<html>three</html>\n"
    assert os.readlink(site / "current") == f"releases/{third.name}"  # relative: the folder may move
    assert (site / "previous" / "index.html").read_text() == "<html>two</html>\n"
    assert sorted(p.name for p in (site / "releases").iterdir()) == sorted(
        [second.name, second.name + ".fingerprint", third.name, third.name + ".fingerprint"])


def test_rollback_serves_the_previous_build_and_pauses_until_resumed(tmp_path: Path) -> None:
    site = tmp_path / "site"
    with pytest.raises(live.SiteDirError, match="no previous build"):
        live.rollback(site)
    for name in ("one", "two"):
        live.swap_in(site, fake_build(live.new_release(site, name * 32), name), name * 32)
    live.rollback(site)
    assert live_text(site) == "<html>one</html>\n" and live.is_paused(site)
    assert live.current_fingerprint(site) == "one" * 32
    live.rollback(site)  # a second rollback undoes the first
    assert live_text(site) == "<html>two</html>\n"
    live.resume(site)
    assert not live.is_paused(site)


def test_a_real_folder_where_the_symlink_belongs_is_refused(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "current").mkdir(parents=True)
    with pytest.raises(live.SiteDirError, match="not a symlink"):
        live.current_fingerprint(site)


# --- publish: an rsync-style copy ------------------------------------------------------------

def test_publish_copies_only_what_changed_and_deletes_what_is_gone(tmp_path: Path) -> None:
    site, dest = tmp_path / "site", tmp_path / "www"
    release = fake_build(live.new_release(site, "a" * 64), "one", {"a/x.html": "x", "b/y.css": "y", "z.txt": "z"})
    live.swap_in(site, release, "a" * 64)
    first = live.publish(site, dest)
    assert (first.copied, first.unchanged, first.deleted) == (4, 0, 0)
    (dest / "stale.html").write_text("old")
    untouched = (dest / "a" / "x.html").stat()
    second = fake_build(live.new_release(site, "b" * 64), "two", {"a/x.html": "x", "z.txt": "zz"})
    live.swap_in(site, second, "b" * 64)
    report = live.publish(site, dest)
    assert (report.copied, report.unchanged, report.deleted) == (2, 1, 2)  # index, z; x; y.css, stale
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == ["a", "a/x.html", "index.html", "z.txt"]
    assert (dest / "z.txt").read_text() == "zz" and (dest / "index.html").read_text() == "<html>two</html>\n"
    after = (dest / "a" / "x.html").stat()
    assert (after.st_ino, after.st_mtime_ns) == (untouched.st_ino, untouched.st_mtime_ns)
    with pytest.raises(live.SiteDirError, match="one holds the other"):
        live.publish(site, site / "current" / "sub")


def test_the_publish_command_copies_the_live_site(tmp_path: Path) -> None:
    site, dest = tmp_path / "site", tmp_path / "www"
    live.swap_in(site, fake_build(live.new_release(site, "a" * 64), "one", {"en/index.html": "en"}), "a" * 64)
    env = {**os.environ, "VOUCHERS_SITE_DIR": str(site), "VOUCHERS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db"}
    done = subprocess.run([sys.executable, "-m", "service.cli", "site", "publish", str(dest)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "2 copied, 0 unchanged, 0 deleted" in done.stdout
    assert (dest / "en" / "index.html").read_text() == "en"
    rolled = subprocess.run([sys.executable, "-m", "service.cli", "site", "rollback"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert rolled.returncode != 0 and "no previous build" in rolled.stderr


# --- the background process's rounds ---------------------------------------------------------

def test_the_fingerprint_ignores_the_moment_but_not_the_figures() -> None:
    import datetime as dt

    snapshot = make_snapshot(providers=2)
    later = msgspec.structs.replace(snapshot, taken_at=snapshot.taken_at + dt.timedelta(hours=1))
    assert fingerprint(later) == fingerprint(snapshot)
    moved = msgspec.structs.replace(first_come_scheme(), places_used=121)
    changed = msgspec.structs.replace(snapshot, schemes=(moved, *snapshot.schemes[1:]))
    assert fingerprint(changed) != fingerprint(snapshot)
    assert fingerprint(snapshot, "https://www.arnhem.nl/voucher/") != fingerprint(snapshot)


def keeper_for(rt: Runtime, site: Path) -> Keeper:
    settings = msgspec.structs.replace(rt.settings, site_dir=str(site), site_interval_seconds=1.0)
    return Keeper(Runtime(settings, rt.engine, rt.sessionmaker, rt.keys, rt.reader, rt.fast))


def figures(site: Path) -> tuple[int, int]:
    """Places used and of how many, as the live scheme page shows them."""
    found = re.search(r"(\d+) van de (\d+) plaatsen zijn gebruikt", live_text(site, SCHEME_PAGE))
    assert found, "no figures on the scheme page"
    return int(found[1]), int(found[2])


async def test_a_round_builds_only_when_the_public_figures_changed(rt: Runtime, tmp_path: Path) -> None:
    scheme = await make_scheme(rt)
    site = tmp_path / "site"
    keeper = keeper_for(rt, site)
    assert await keeper.round() == "built"
    assert figures(site) == (0, 300)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (site / "releases").iterdir())
    assert await keeper.round() == "unchanged"
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (site / "releases").iterdir()) == before
    await make_voucher(rt, scheme)
    assert await keeper.round() == "built"
    assert figures(site) == (1, 300)
    await make_provider(rt, scheme, name="Nieuwe Coach Rijnstad")
    assert await keeper.round() == "built"
    assert "Nieuwe Coach Rijnstad" in live_text(site, "aanbieders/index.html")


async def test_a_failed_build_keeps_the_live_site_and_backs_off(rt: Runtime, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    from service.sitegen import keeper as keeper_module
    from service.sitegen.build import SiteBuildError

    scheme = await make_scheme(rt)
    site = tmp_path / "site"
    keeper = keeper_for(rt, site)
    assert await keeper.round() == "built"
    await make_voucher(rt, scheme, company_name="Geheimbedrijf BV", email="geheim@voorbeeld.nl")

    def broken(*args: object, **kwargs: object) -> Path:
        raise SiteBuildError("mkdocs build failed (1):\nERROR - a theme file is missing")

    monkeypatch.setattr(keeper_module, "build_site", broken)
    task = asyncio.create_task(keeper.run())
    with caplog.at_level(logging.WARNING, logger="service.sitegen.keeper"):
        deadline = time.monotonic() + 20
        while keeper.failures < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert keeper.failures >= 2
    assert figures(site) == (0, 300)  # the live site stayed
    assert [p for p in (site / "releases").iterdir() if p.is_dir()] == [live.current_dir(site)]  # no half build left
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == ("public site build failed, the live site stays as it was; next try in 2 s "
                        "(SiteBuildError: mkdocs build failed (1):)")
    assert "next try in 4 s" in lines[1]
    assert not any("Geheim" in line or "geheim" in line for line in lines)
    assert keeper.next_pause(ok=True) == 1.0 and keeper.failures == 0


async def test_only_the_lease_holder_builds(rt: Runtime, tmp_path: Path) -> None:
    await make_scheme(rt)
    one, other = keeper_for(rt, tmp_path / "one"), keeper_for(rt, tmp_path / "other")
    assert await one.round() == "built"
    assert await other.round() == "elsewhere" and not (tmp_path / "other").exists()
    assert await one.round() == "unchanged"  # renewing is not refused
    await lease.give_up(rt.sessionmaker, "site", one.holder)  # e.g. the host stopped
    assert await other.round() == "built"
    assert await one.round() == "elsewhere"


async def test_a_lease_that_ran_out_is_taken_over(rt: Runtime) -> None:
    assert await lease.take(rt.sessionmaker, "job", "a", seconds=0.2)
    assert not await lease.take(rt.sessionmaker, "job", "b", seconds=60)
    await asyncio.sleep(0.3)
    assert await lease.take(rt.sessionmaker, "job", "b", seconds=60)
    assert not await lease.take(rt.sessionmaker, "job", "a", seconds=60)


async def test_a_paused_site_is_not_rebuilt(rt: Runtime, tmp_path: Path) -> None:
    scheme = await make_scheme(rt)
    site = tmp_path / "site"
    keeper = keeper_for(rt, site)
    assert await keeper.round() == "built"
    await make_voucher(rt, scheme)
    assert await keeper.round() == "built"
    live.rollback(site)
    await make_voucher(rt, scheme)
    assert await keeper.round() == "paused" and figures(site) == (0, 300)
    live.resume(site)
    assert await keeper.round() == "built" and figures(site) == (2, 300)


# --- atomic swaps under a reader ----------------------------------------------------------------

class Reader:
    """Fetches pages of the live site in a loop from another thread, as visitors would."""

    def __init__(self, url: str, pages: tuple[str, ...]) -> None:
        self.url, self.pages = url, pages
        self.fetched = 0
        self.problems: list[str] = []
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for page in self.pages:
                try:
                    with urllib.request.urlopen(self.url + page, timeout=10) as response:
                        body = response.read().decode()
                        length = int(response.headers["Content-Length"])
                except (urllib.error.URLError, OSError, ValueError) as exc:
                    self.problems.append(f"{page}: {exc}")
                    continue
                self.fetched += 1
                if len(body.encode()) != length or not body.rstrip().endswith("</html>"):
                    self.problems.append(f"{page}: partial page")
                found = re.search(r"(\d+) (?:van de|of the) \d+ (?:plaatsen|places)", body)
                if found:
                    self.seen.add(found[1])

    @contextlib.contextmanager
    def running(self) -> Iterator[Reader]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=30)


def test_swaps_are_atomic_for_a_reader_fetching_in_a_loop(tmp_path: Path) -> None:
    site = tmp_path / "site"
    base = make_snapshot(providers=20)
    scheme_page = "regelingen/ondernemersvoucher-2025/"

    def rebuild(used: int) -> None:
        scheme = msgspec.structs.replace(first_come_scheme(), places_used=used)
        snapshot = msgspec.structs.replace(base, schemes=(scheme, *base.schemes[1:]))
        release = live.new_release(site, fingerprint(snapshot))
        build_site(snapshot, release)
        live.swap_in(site, release, fingerprint(snapshot))

    rebuild(100)
    with serve_in_thread(site_server(site / "current")) as url:
        reader = Reader(url, ("", "en/", scheme_page, "en/" + scheme_page, "aanbieders/", "no-such-page/"))
        with reader.running():
            for used in (101, 102, 103):
                rebuild(used)
            time.sleep(0.2)
    # The missing page is answered with the site's 404 page, which is a whole page too.
    assert [p for p in reader.problems if "no-such-page" not in p or "partial" in p] == []
    assert reader.fetched > 20 and {"100", "103"} <= reader.seen


# --- done: the background process running as its own process ---------------------------------------

@contextlib.contextmanager
def background_process(rt: Runtime, site: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, **settings_env(rt.settings), "VOUCHERS_SITE_DIR": str(site),
           "VOUCHERS_SITE_INTERVAL_SECONDS": "1", "VOUCHERS_OUTBOX_INTERVAL_SECONDS": "60",
           "VOUCHERS_SWEEP_INTERVAL_SECONDS": "600"}
    process = subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield process
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err.decode(errors="replace")[-3000:]


async def wait_for(check, seconds: float) -> float:  # type: ignore[no-untyped-def]
    """Wait until ``check()`` is true; return how long it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"not within {seconds} s")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def test_applications_and_redemptions_reach_the_site_without_a_command(rt: Runtime, tmp_path: Path) -> None:
    """The background process (``vouchers worker``) runs; an application and a redemption change
    the live site's figures within the interval plus one build, while a reader fetching pages in
    a loop never gets a missing or partial page."""
    scheme = await make_scheme(rt)
    provider, _ = await make_provider(rt, scheme, name="Zichtbare Coach")
    site = tmp_path / "site"

    def shows(text: str) -> bool:
        try:
            return text in live_text(site, SCHEME_PAGE)
        except FileNotFoundError:
            return False

    with background_process(rt, site) as process:
        await wait_for(lambda: shows("0 van de 300 plaatsen"), 60)  # the build at start
        with serve_in_thread(site_server(site / "current")) as url:
            reader = Reader(url, READER_PAGES)
            with reader.running():
                voucher, _ = await make_voucher(rt, scheme)
                took = await wait_for(lambda: shows("1 van de 300 plaatsen"), 60)
                assert took < 1 + 30, took  # the interval, and a build on a busy machine

                async def redeem(session):  # type: ignore[no-untyped-def]
                    fresh = await session.get_one(Voucher, voucher.id)
                    await vouchers.redeem(session, rt, fresh, provider_id=provider.id, provider_name="Zichtbare Coach",
                                          category="coaching", invoice_cents=25_000, reference="F-1",
                                          session_date=None, recorded_by="t")

                await run_in_transaction(rt.sessionmaker, redeem)
                await wait_for(lambda: shows("€\u00a0250,00 is al besteed"), 60)
            assert process.poll() is None
        assert reader.problems == [] and reader.fetched > 0
        assert {"0", "1"} <= reader.seen
