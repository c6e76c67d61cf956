"""The live site on disk: each build in a folder of its own, and one symlink the web server follows.

    <site_dir>/current   -> releases/<name>    what the web server serves (point it at this path)
    <site_dir>/previous  -> releases/<name>    what ``vouchers site rollback`` brings back
    <site_dir>/releases/<name>/                one complete build
    <site_dir>/releases/<name>.fingerprint     the input that build was made from
    <site_dir>/paused                          written by a rollback: no automatic builds until
                                               ``vouchers site resume``

A build is written beside the live one; only when it is complete does ``current`` change, by
renaming a new symlink over the old one (``rename`` is atomic), so a visitor gets either the old
site or the new one, never a mix or a missing page. Builds older than ``previous`` are removed.

``publish`` copies the live build to another folder (a mounted share, a web server's root), rsync
style: only changed files, each replaced atomically, and files that are gone deleted.
"""

from __future__ import annotations

import datetime as dt
import filecmp
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = ("PublishReport", "SiteDirError", "current_dir", "current_fingerprint", "discard", "is_paused",
           "new_release", "publish", "resume", "rollback", "swap_in")

CURRENT, PREVIOUS, RELEASES, PAUSED = "current", "previous", "releases", "paused"


class SiteDirError(RuntimeError):
    """The site folder is not in the state an operation needs; the message says why."""


def _target(site_dir: Path, link: str) -> Path | None:
    path = site_dir / link
    if not path.is_symlink():
        if path.exists():
            raise SiteDirError(f"{path} is not a symlink; move it away first")
        return None
    return (site_dir / os.readlink(path)).resolve()


def current_dir(site_dir: Path) -> Path | None:
    """The folder the live site is in, or None before the first build."""
    return _target(Path(site_dir), CURRENT)


def current_fingerprint(site_dir: Path) -> str | None:
    """The fingerprint of the input the live site was built from (None before the first build)."""
    current = current_dir(site_dir)
    if current is None:
        return None
    marker = current.with_name(current.name + ".fingerprint")
    return marker.read_text(encoding="ascii").strip() if marker.is_file() else None


def new_release(site_dir: Path, fingerprint: str) -> Path:
    """A fresh, not yet existing folder for a build, named after the time and its input."""
    releases = Path(site_dir).resolve() / RELEASES
    releases.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return releases / f"{stamp}-{fingerprint[:12]}"


def _point(link: Path, target: Path) -> None:
    """Make ``link`` point at ``target`` in one step: a new symlink renamed over the old one."""
    temporary = link.with_name(f".{link.name}.{os.getpid()}.new")
    temporary.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target, link.parent), temporary)
    os.replace(temporary, link)


def swap_in(site_dir: Path, release: Path, fingerprint: str) -> None:
    """Make the complete build in ``release`` the live site; the old one becomes ``previous``."""
    site_dir = Path(site_dir).resolve()
    release = Path(release).resolve()
    if not (release / "index.html").is_file():
        raise SiteDirError(f"{release} holds no built site")
    release.with_name(release.name + ".fingerprint").write_text(fingerprint + "\n", encoding="ascii")
    old = current_dir(site_dir)
    if old is not None and old != release:
        _point(site_dir / PREVIOUS, old)
    _point(site_dir / CURRENT, release)
    _prune(site_dir)


def _prune(site_dir: Path) -> None:
    """Remove builds that are neither current nor previous (and fingerprints without a build)."""
    keep = {_target(site_dir, CURRENT), _target(site_dir, PREVIOUS)}
    for entry in (site_dir / RELEASES).iterdir():
        build = entry.with_name(entry.name.removesuffix(".fingerprint"))
        if build in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def discard(release: Path) -> None:
    """Remove a build that failed halfway; the live site never pointed at it."""
    shutil.rmtree(release, ignore_errors=True)


def rollback(site_dir: Path) -> Path:
    """Serve the previous build again (the current one becomes ``previous``, so a second rollback
    undoes the first) and pause automatic builds. Returns the folder now live."""
    site_dir = Path(site_dir).resolve()
    current, previous = _target(site_dir, CURRENT), _target(site_dir, PREVIOUS)
    if previous is None or not previous.is_dir():
        raise SiteDirError(f"no previous build in {site_dir} to roll back to")
    (site_dir / PAUSED).write_text(
        "Automatic builds are paused after a rollback; `vouchers site resume` starts them again.\n",
        encoding="utf-8")
    if current is not None:
        _point(site_dir / PREVIOUS, current)
    _point(site_dir / CURRENT, previous)
    return previous


def is_paused(site_dir: Path) -> bool:
    return (Path(site_dir) / PAUSED).exists()


def resume(site_dir: Path) -> None:
    """Let the background process build again (its next round builds if the input changed)."""
    (Path(site_dir) / PAUSED).unlink(missing_ok=True)


@dataclass(frozen=True)
class PublishReport:
    copied: int
    unchanged: int
    deleted: int


def publish(source: Path, dest: Path) -> PublishReport:
    """Make ``dest`` a copy of the built site in ``source`` (a site folder with ``current``, or a
    built site itself): changed and new files are written to a temporary name and renamed into
    place, files that ``source`` no longer has are deleted, unchanged files are left alone."""
    source = Path(source)
    live = current_dir(source) if (source / CURRENT).is_symlink() else source.resolve()
    if live is None or not (live / "index.html").is_file():
        raise SiteDirError(f"no built site in {source}")
    dest = Path(dest).resolve()
    if dest == live or live in dest.parents or dest in live.parents:
        raise SiteDirError(f"refusing to publish {live} into {dest}: one holds the other")
    dest.mkdir(parents=True, exist_ok=True)
    copied = unchanged = 0
    wanted: set[Path] = set()
    for path in sorted(live.rglob("*")):
        relative = path.relative_to(live)
        wanted.add(relative)
        target = dest / relative
        if path.is_dir():
            if target.exists() and not target.is_dir():
                target.unlink()
            target.mkdir(exist_ok=True)
            continue
        if target.is_file() and filecmp.cmp(path, target, shallow=False):
            unchanged += 1
            continue
        if target.is_dir():
            shutil.rmtree(target)
        temporary = target.with_name(f".{target.name}.publish-{os.getpid()}")
        shutil.copyfile(path, temporary)
        os.replace(temporary, target)
        copied += 1
    deleted = 0
    # Deepest first, so a folder is empty by the time it is removed.
    for path in sorted(dest.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.relative_to(dest) in wanted:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
            deleted += 1
    return PublishReport(copied=copied, unchanged=unchanged, deleted=deleted)
