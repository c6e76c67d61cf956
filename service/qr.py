"""QR images of a voucher's validation URL, ``{base_url}/v/{code}``, so any phone camera opens it.

Rendering costs about 10 ms, most of it scoring the eight mask patterns; one fixed mask gives a
valid code several times faster. Images are also cached per code, so a holder who opens the
page twice pays once; they are never on the redeem or scan path.
"""

from __future__ import annotations

import io
from functools import lru_cache

import qrcode
import qrcode.constants
from qrcode.image.pure import PyPNGImage
from qrcode.image.svg import SvgPathImage

__all__ = ("qr_png", "qr_svg", "render_svg")

_MASK = 4  # any of the eight is valid; fixing one skips the scoring


def _make(url: str) -> qrcode.QRCode:
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=8, border=4, mask_pattern=_MASK)
    code.add_data(url)
    code.make(fit=True)
    return code


@lru_cache(maxsize=512)
def qr_png(url: str) -> bytes:
    buffer = io.BytesIO()
    _make(url).make_image(image_factory=PyPNGImage).save(buffer)
    return buffer.getvalue()


@lru_cache(maxsize=512)
def qr_svg(url: str) -> bytes:
    return render_svg(url)


def render_svg(text: str) -> bytes:
    """Uncached, for content that must not stay in memory (a TOTP secret)."""
    buffer = io.BytesIO()
    _make(text).make_image(image_factory=SvgPathImage).save(buffer)
    return buffer.getvalue()
