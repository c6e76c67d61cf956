"""Keep the public site current: the background process's loop (``service.worker``).

Every ``site_interval_seconds`` the process holding the ``site`` lease takes the public snapshot
and compares its fingerprint with the one the live site was built from. Only when they differ
(a figure, a provider, an offer or a scheme's status changed, or the site's templates did) does
it build, beside the live site, and swap the new build in (``live.swap_in``). So the site is at
most one interval behind, and a round whose input did not change writes nothing. A failed build
leaves the live site alone, is logged in one line, and is tried again after a growing pause.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import hashlib
import logging
from pathlib import Path

import msgspec

from .. import lease
from ..runtime import Runtime
from . import daily, live
from .build import CONFIG, build_site
from .collect import collect_snapshot
from .pages import BRAND_FILES, HAND_WRITTEN, TEMPLATES
from .snapshot import PublicSnapshot, snapshot_to_json

__all__ = ("Keeper", "fingerprint", "keep_current")

log = logging.getLogger(__name__)

LEASE = "site"
MAX_BACKOFF_SECONDS = 3600.0
_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


@functools.cache
def _sources_digest() -> str:
    """The hand-written pages, templates, theme and the generator's own code: a new release of
    the service rebuilds the site even when no figure changed."""
    digest = hashlib.sha256()
    files = [CONFIG, *BRAND_FILES, *sorted(Path(__file__).parent.glob("*.py"))]
    for folder in (HAND_WRITTEN, TEMPLATES):
        files += sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        digest.update(str(path.relative_to(CONFIG.parent)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def fingerprint(snapshot: PublicSnapshot, site_url: str | None = None) -> str:
    """What the site is built from, as one hash. The moment the snapshot was taken is left out:
    it changes every round, the figures do not."""
    timeless = msgspec.structs.replace(snapshot, taken_at=_EPOCH)
    digest = hashlib.sha256(snapshot_to_json(timeless))
    digest.update(b"\0" + (site_url or "").encode() + b"\0" + _sources_digest().encode())
    return digest.hexdigest()


def _reason(exc: BaseException) -> str:
    """One short line for the log: the kind of error and the first line of its message. Only
    public figures and file names reach the build, so no personal data can be in it."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}"[:300]


@dataclasses.dataclass
class Keeper:
    """One process's part: the lease holder's name and how its builds went."""

    rt: Runtime
    holder: str = dataclasses.field(default_factory=lease.holder_name)
    failures: int = 0

    @property
    def site_dir(self) -> Path:
        return Path(self.rt.settings.site_dir)

    def lease_seconds(self) -> float:
        # Outlasts the pause between two rounds and a slow build; a host that is gone hands over
        # after this long.
        return 3 * self.rt.settings.site_interval_seconds + 120

    async def round(self) -> str:
        """One round: ``built``, ``unchanged``, ``paused`` or ``elsewhere`` (another process
        holds the lease). Raises when the build fails; the live site is untouched then."""
        s = self.rt.settings
        if not await lease.take(self.rt.sessionmaker, LEASE, self.holder, self.lease_seconds()):
            return "elsewhere"
        await daily.record_day(self.rt.sessionmaker)  # before a pause too: the series has no gaps
        if live.is_paused(self.site_dir):
            return "paused"
        async with self.rt.reader() as session:
            snapshot = await collect_snapshot(session, service_url=s.base_url)
        new_print = fingerprint(snapshot, s.site_url)
        if new_print == live.current_fingerprint(self.site_dir):
            return "unchanged"
        release = live.new_release(self.site_dir, new_print)
        try:
            await asyncio.to_thread(build_site, snapshot, release, site_url=s.site_url)
            live.swap_in(self.site_dir, release, new_print)
        except BaseException:
            live.discard(release)
            raise
        return "built"

    def next_pause(self, ok: bool) -> float:
        """The interval after a good round; after failures, twice as long each time (at most an hour)."""
        interval = self.rt.settings.site_interval_seconds
        self.failures = 0 if ok else self.failures + 1
        return interval if ok else min(interval * 2 ** self.failures, max(interval, MAX_BACKOFF_SECONDS))

    async def run(self) -> None:
        """Rounds until cancelled: the first at once (so a start builds if anything changed),
        then one per interval."""
        try:
            while True:
                try:
                    outcome = await self.round()
                    if outcome == "built":
                        log.info("public site rebuilt in %s", self.site_dir)
                    pause = self.next_pause(ok=True)
                except Exception as exc:
                    pause = self.next_pause(ok=False)
                    log.warning("public site build failed, the live site stays as it was; next try in %.0f s (%s)",
                                pause, _reason(exc))
                await asyncio.sleep(pause)
        finally:
            try:
                await lease.give_up(self.rt.sessionmaker, LEASE, self.holder)
            except Exception:  # the lease runs out by itself
                log.info("could not hand the site lease back; it runs out by itself")


async def keep_current(rt: Runtime) -> None:
    """The background process's site loop (``Settings.site_rebuild``)."""
    await Keeper(rt).run()
