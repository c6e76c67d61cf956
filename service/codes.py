"""Voucher codes: 115 bits, Crockford base32, grouped, with a Luhn mod 32 check symbol.

Luhn mod N catches every single-character substitution, so a typo is refused before any
database lookup. A code is derived from a random per-voucher salt and a key derived from the
server's secret; only an HMAC of the code is stored (``Voucher.code_hash``). Someone with a copy
of the database has neither the code nor the key to compute it.
"""

from __future__ import annotations

import hmac
import secrets

from stdnum import luhn
from stdnum.exceptions import ValidationError

from .settings import Settings

__all__ = (
    "ALPHABET",
    "CODE_BODY_LENGTH",
    "CodeKeys",
    "InvalidCode",
    "format_code",
    "new_public_id",
    "new_token",
    "normalise_code",
)

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford: no I, L, O, U
CODE_BODY_LENGTH = 23  # 23 × 5 = 115 random bits, plus one check symbol = 24 symbols
_CROCKFORD_ALIASES = str.maketrans({"I": "1", "L": "1", "O": "0"})


class InvalidCode(ValueError):
    """The text cannot be a voucher code (wrong length, characters or check symbol)."""


def _encode(data: bytes, length: int) -> str:
    number = int.from_bytes(data, "big")
    symbols = []
    for _ in range(length):
        number, index = divmod(number, 32)
        symbols.append(ALPHABET[index])
    return "".join(symbols)


def normalise_code(text: str) -> str:
    """Turn what a person typed or a camera read into the canonical 24 symbols.

    Case, spaces and dashes do not matter, and I/L/O read as 1/1/0 as Crockford intends.
    Raises :class:`InvalidCode` when the check symbol does not match.
    """
    cleaned = "".join(text.split()).replace("-", "").upper().translate(_CROCKFORD_ALIASES)
    if len(cleaned) != CODE_BODY_LENGTH + 1 or any(c not in ALPHABET for c in cleaned):
        raise InvalidCode(text)
    try:
        luhn.validate(cleaned, alphabet=ALPHABET)
    except ValidationError:
        raise InvalidCode(text) from None
    return cleaned


def format_code(code: str) -> str:
    """Group the symbols in fours for reading aloud and typing: ``ABCD-EFGH-…``."""
    return "-".join(code[i : i + 4] for i in range(0, len(code), 4))


class CodeKeys:
    """The two keys that turn salts into codes and codes into lookup hashes."""

    def __init__(self, code_key: bytes, hash_key: bytes) -> None:
        self._code_key = code_key
        self._hash_key = hash_key

    @classmethod
    def from_settings(cls, settings: Settings) -> CodeKeys:
        return cls(settings.derive_key("voucher-code"), settings.derive_key("voucher-code-hash"))

    @staticmethod
    def new_salt() -> bytes:
        return secrets.token_bytes(16)

    def code_for(self, salt: bytes) -> str:
        """The voucher's code, canonical form (no dashes)."""
        digest = hmac.digest(self._code_key, salt, "sha256")
        body = _encode(digest, CODE_BODY_LENGTH)
        return body + luhn.calc_check_digit(body, alphabet=ALPHABET)

    def hash_of(self, code: str) -> bytes:
        """The stored lookup key of a canonical code."""
        return hmac.digest(self._hash_key, code.encode(), "sha256")


def new_public_id(prefix: str) -> str:
    """A short random id that is safe to publish (application pseudonyms, references)."""
    return prefix + _encode(secrets.token_bytes(8), 12)


def new_token() -> str:
    """A bearer token for the API: 256 random bits, URL-safe."""
    return "vt_" + secrets.token_urlsafe(32)
