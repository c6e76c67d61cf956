"""How long the public site takes to build, and what a round whose input did not change costs.

    python -m bench --scenarios site [--quick]

Two snapshots: the one the site tests use (100 providers, a 300-place scheme and an upcoming
lottery) and a large one (5 schemes with 120 days of history each, 1,000 providers). For each:
a cold build (``service.sitegen.build_site``, mkdocs in a subprocess, into a fresh folder as the
background process does), and the check an unchanged round makes instead of a build (take the
fingerprint, compare it with the live build's), which writes nothing. ``--quick`` makes the large
one 100 providers, to prove the harness in seconds.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from service.sitegen import PublicSnapshot, build_site, live
from service.sitegen.keeper import fingerprint
from tests.site_snapshot import first_come_scheme, history, make_snapshot, provider

__all__ = ("large_snapshot", "measure", "results")


def large_snapshot(schemes: int = 5, providers: int = 1000, days: int = 120) -> PublicSnapshot:
    """``schemes`` open schemes with ``days`` of history each, and ``providers`` providers spread over them."""
    base = make_snapshot(providers=0)
    facts = tuple(
        msgspec.structs.replace(first_come_scheme(), slug=f"regeling-{n + 1}", name=f"Regeling {n + 1}",
                                name_en=f"Scheme {n + 1}", history=history(days, 120 + n, 135_000, 4_000_000))
        for n in range(schemes))
    slugs = [s.slug for s in facts]
    everyone = tuple(provider(i, (slugs[i % schemes], slugs[(i + 1) % schemes])) for i in range(providers))
    return msgspec.structs.replace(base, schemes=facts, providers=everyone)


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def measure(snapshot: PublicSnapshot) -> dict[str, Any]:
    """One cold build into a site folder as the background process makes it, then an unchanged round."""
    with tempfile.TemporaryDirectory(prefix="bench-site-") as scratch:
        site = Path(scratch) / "site"
        started = time.perf_counter()
        new_print = fingerprint(snapshot)
        release = live.new_release(site, new_print)
        build_site(snapshot, release, site_url="http://127.0.0.1/")
        live.swap_in(site, release, new_print)
        build_seconds = time.perf_counter() - started
        before = _files(site)
        later = msgspec.structs.replace(snapshot, taken_at=snapshot.taken_at + dt.timedelta(minutes=1))
        started = time.perf_counter()
        unchanged = fingerprint(later) == live.current_fingerprint(site)
        check_ms = (time.perf_counter() - started) * 1000
        assert unchanged and _files(site) == before, "an unchanged round wrote something"
        return {
            "seconds": round(build_seconds, 2),
            "unchanged_check_ms": round(check_ms, 1),
            "pages": sum(1 for _ in release.rglob("*.html")),
            "files": sum(1 for p in release.rglob("*") if p.is_file()),
            "schemes": len(snapshot.schemes),
            "providers": len(snapshot.providers),
            "places": sum(s.max_places for s in snapshot.schemes),
        }


def results(quick: bool = False) -> list[dict[str, Any]]:
    """The two measurements as result entries of ``python -m bench`` (printed as notes)."""
    out = []
    for label, snapshot in (("the tests' snapshot", make_snapshot(providers=100)),
                            ("5 schemes", large_snapshot(providers=100 if quick else 1000))):
        figures = measure(snapshot)
        out.append({"kind": "note", "figures": figures, "text": (
            f"**Site build**, {label} ({figures['schemes']} schemes, {figures['providers']} providers, "
            f"{figures['pages']} pages, {figures['files']} files): {figures['seconds']:.1f} s; a round whose "
            f"input did not change: {figures['unchanged_check_ms']:.1f} ms, nothing written.")})
    return out
