"""Build the static site with mkdocs, and serve a built site for a preview.

The build works in a scratch folder: a copy of site/ filled with the snapshot
(see pages.py) plus a mkdocs config derived from the top-level mkdocs.yml. mkdocs
runs in a subprocess of this Python, so its plugins' global state and warnings
stay out of the service's process.
"""

import functools
import http.server
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import msgspec
import yaml

from .pages import ROOT, refuse_to_touch, scheme_pages, write_sources
from .snapshot import PublicSnapshot

CONFIG = ROOT / "mkdocs.yml"
SCHEMES_INDEX = "regelingen/index.md"


class SiteBuildError(RuntimeError):
    """mkdocs refused the generated site; the message holds its output."""


def build_site(
    snapshot: PublicSnapshot,
    out_dir: Path,
    *,
    work_dir: Path | None = None,
    site_url: str | None = None,
) -> Path:
    """Build the public site for `snapshot` into out_dir (emptied first) and return it.

    work_dir keeps the generated sources for inspection; without it a temporary
    folder is used and removed. site_url is where the site will be served; it
    matters for the 404 page, which must find its styles from any depth.
    """
    out_dir = Path(out_dir).resolve()
    refuse_to_touch(out_dir)
    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix="vouchers-site-") as scratch:
            return _build(snapshot, out_dir, Path(scratch), site_url)
    return _build(snapshot, out_dir, Path(work_dir).resolve(), site_url)


def _build(snapshot: PublicSnapshot, out_dir: Path, work_dir: Path, site_url: str | None) -> Path:
    src_dir = work_dir / "src"
    write_sources(snapshot, src_dir)
    config_file = work_dir / "mkdocs.yml"
    config = _site_config(src_dir, out_dir, scheme_pages(snapshot), site_url)
    # For the footer on every page (theme partial copyright.html).
    config.setdefault("extra", {})["contact"] = msgspec.to_builtins(snapshot.contact)
    config_file.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-f", str(config_file)],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    if result.returncode != 0:
        raise SiteBuildError(f"mkdocs build failed ({result.returncode}):\n{result.stderr}{result.stdout}")
    return out_dir


def _site_config(src_dir: Path, out_dir: Path, pages: list[str], site_url: str | None) -> dict:
    """The top-level mkdocs.yml, pointed at the work copy, with scheme pages in the nav."""
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    config["docs_dir"] = str(src_dir)
    config["site_dir"] = str(out_dir)
    config["theme"]["custom_dir"] = str(ROOT / config["theme"]["custom_dir"])
    if site_url:
        config["site_url"] = site_url
    config["nav"] = [_with_pages(item, pages) for item in config["nav"]]
    return config


def _with_pages(item: object, pages: list[str]) -> object:
    """Add the scheme pages to the nav section that holds the schemes overview."""
    if isinstance(item, dict):
        return {title: (entries + pages if SCHEMES_INDEX in entries else entries)
                for title, entries in item.items()}
    return item


class _SiteHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the built folder and answers unknown paths with the site's 404 page."""

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        page = Path(self.directory) / "404.html"
        if code != 404 or not page.is_file():
            super().send_error(code, message, explain)
            return
        body = page.read_bytes()
        self.send_response(404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib name)
        """Keep test and preview output quiet; errors still surface as responses."""


def site_server(site_dir: Path, host: str = "127.0.0.1", port: int = 0) -> http.server.ThreadingHTTPServer:
    """An HTTP server for a built site (port 0 picks a free port)."""
    handler = functools.partial(_SiteHandler, directory=str(site_dir))
    return http.server.ThreadingHTTPServer((host, port), handler)


def serve_site(site_dir: Path, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Preview a built site until interrupted. Not for production: use a real web server."""
    with site_server(site_dir, host, port) as server:
        print(f"Serving {site_dir} at http://{host}:{server.server_address[1]}/ (Ctrl+C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
