"""The public information site of the voucher service.

The service hands over a PublicSnapshot (public figures only); this package writes
Markdown sources for it next to the hand-written pages in site/ and builds a static
nl/en site with mkdocs that any web server can serve.
"""

from .build import SiteBuildError, build_site, serve_site, site_server
from .pages import write_sources
from .snapshot import (
    ContactFacts,
    FiguresPoint,
    OfferFacts,
    ProviderFacts,
    PublicSnapshot,
    SchemeFacts,
    snapshot_from_json,
    snapshot_to_json,
)

__all__ = [
    "ContactFacts",
    "FiguresPoint",
    "OfferFacts",
    "ProviderFacts",
    "PublicSnapshot",
    "SchemeFacts",
    "SiteBuildError",
    "build_site",
    "serve_site",
    "site_server",
    "snapshot_from_json",
    "snapshot_to_json",
    "write_sources",
]
