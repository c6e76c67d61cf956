"""The site's benchmark (``bench/site_build.py``) works: a build, then an unchanged round that
writes nothing. A small snapshot; the timed runs are ``make bench``."""

from __future__ import annotations

from bench.site_build import large_snapshot, measure


def test_the_site_benchmark_builds_and_then_writes_nothing() -> None:
    snapshot = large_snapshot(schemes=2, providers=5, days=3)
    assert [s.slug for s in snapshot.schemes] == ["regeling-1", "regeling-2"] and len(snapshot.providers) == 5
    figures = measure(snapshot)
    assert figures["schemes"] == 2 and figures["providers"] == 5
    # Home, schemes overview, providers, open data, contact, privacy, accessibility and two scheme
    # pages, in nl and en.
    assert figures["pages"] == 2 * 9 + 1  # and the 404 page
    assert figures["seconds"] > 0 and figures["unchanged_check_ms"] >= 0
