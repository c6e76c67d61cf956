"""In-process measurements: QR renders (service/qr.py) and the public site build."""

from __future__ import annotations

import importlib.util
import io
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ("measure_qr", "measure_site")


def _rate(render: Any, urls: list[str], seconds: float) -> dict[str, float]:
    """Renders per second over distinct URLs, bounded by count and time."""
    durations = []
    deadline = time.perf_counter() + seconds
    for url in urls:
        started = time.perf_counter()
        render(url)
        durations.append(time.perf_counter() - started)
        if time.perf_counter() > deadline:
            break
    durations.sort()
    total = sum(durations)
    return {"renders": len(durations), "per_second": len(durations) / total if total else 0.0,
            "p50_ms": durations[len(durations) // 2] * 1000, "p99_ms": durations[int(len(durations) * 0.99)] * 1000}


def measure_qr(seconds: float, base_url: str = "https://vouchers.arnhem.nl") -> dict[str, Any]:
    import qrcode
    import qrcode.constants
    from qrcode.image.pure import PyPNGImage

    from service import qr
    from service.codes import ALPHABET

    def url() -> str:
        return f"{base_url}/v/" + "".join(secrets.choice(ALPHABET) for _ in range(24))

    urls = [url() for _ in range(5000)]
    budget = max(0.2, seconds / 4)
    png = _rate(qr.qr_png.__wrapped__, urls, budget)  # uncached: every render is new work
    svg = _rate(qr.qr_svg.__wrapped__, urls, budget)

    def png_all_masks(u: str) -> bytes:  # qrcode's default: score all eight masks
        code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=8, border=4)
        code.add_data(u)
        code.make(fit=True)
        buffer = io.BytesIO()
        code.make_image(image_factory=PyPNGImage).save(buffer)
        return buffer.getvalue()

    default_mask = _rate(png_all_masks, urls, budget)
    # Serving a QR twice: the first call renders, the second comes from the lru_cache.
    twice_first, twice_second = [], []
    for u in urls[:200]:
        started = time.perf_counter()
        qr.qr_png(u)
        middle = time.perf_counter()
        qr.qr_png(u)
        twice_second.append(time.perf_counter() - middle)
        twice_first.append(middle - started)
        if time.perf_counter() - started > budget:
            break
    twice_first.sort()
    twice_second.sort()
    return {
        "png": png, "svg": svg, "png_all_eight_masks": default_mask,
        "fixed_mask_speedup": png["per_second"] / default_mask["per_second"] if default_mask["per_second"] else None,
        "first_serve_ms": twice_first[len(twice_first) // 2] * 1000,
        "second_serve_us": twice_second[len(twice_second) // 2] * 1e6,
    }


def measure_site() -> dict[str, Any]:
    """``service.sitegen.build_site`` for a snapshot of 100 providers and a 300-place scheme
    (the snapshot the site tests use). Skipped while the site issue has not landed."""
    root = Path(__file__).resolve().parent.parent
    if importlib.util.find_spec("service.sitegen") is None or not (root / "tests" / "site_snapshot.py").exists():
        return {"skipped": "service.sitegen (the site issue) has not landed yet"}
    from service.sitegen import build_site
    from tests.site_snapshot import make_snapshot

    snapshot = make_snapshot(providers=100)
    with tempfile.TemporaryDirectory(prefix="bench-site-") as scratch:
        started = time.perf_counter()
        out = build_site(snapshot, Path(scratch) / "out", site_url="http://127.0.0.1/")
        seconds = time.perf_counter() - started
        pages = sum(1 for _ in out.rglob("*.html"))
    places = sum(s.max_places for s in snapshot.schemes)
    return {"seconds": seconds, "pages": pages, "providers": len(snapshot.providers), "places": places}
