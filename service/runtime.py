"""What the domain needs besides a session: settings, keys and signed links. Built once per
process by the app, the CLI and the tests alike."""

from __future__ import annotations

import base64
import hmac
import time
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from . import audit
from .codes import CodeKeys
from .db import create_engine, make_sessionmaker
from .fastpath import FastPath
from .settings import Settings

__all__ = ("Runtime",)


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    """Sessions for work that changes something."""
    keys: CodeKeys
    reader: async_sessionmaker[AsyncSession]
    """Sessions for lookups only: on SQLite they do not queue behind writers."""
    fast: FastPath
    """The driver's own connections, without a session: the coach's scan, and the redemption and
    application of ``service.fastwrite``."""

    @classmethod
    def create(cls, settings: Settings) -> Runtime:
        audit.install()  # the audit log watches every session of this process
        engine = create_engine(settings)
        writers = 1 if settings.is_sqlite else settings.db_writers_per_process
        key = settings.derive_key("kvk-pseudonym")
        return cls(settings, engine, make_sessionmaker(engine, writers=writers, pseudonym_key=key),
                   CodeKeys.from_settings(settings), make_sessionmaker(engine, read_only=True, pseudonym_key=key),
                   FastPath(settings))

    async def close(self) -> None:
        """Close every connection this process holds."""
        await self.fast.close()
        await self.engine.dispose()

    def link(self, path: str) -> str:
        return self.settings.base_url.rstrip("/") + path

    def sign(self, purpose: str, value: str, max_age_seconds: int) -> str:
        """A URL-safe token that proves the server issued ``value`` for ``purpose``."""
        expires = int(time.time()) + max_age_seconds
        payload = f"{value}.{expires}"
        return f"{payload}.{self._mac(purpose, payload)}"

    def unsign(self, purpose: str, token: str) -> str | None:
        """The value inside a token, or None when it is forged or too old."""
        payload, _, mac = token.rpartition(".")
        value, _, expires = payload.rpartition(".")
        if not value or not expires.isdigit():
            return None
        if not hmac.compare_digest(mac, self._mac(purpose, payload)) or int(expires) < time.time():
            return None
        return value

    def _mac(self, purpose: str, payload: str) -> str:
        digest = hmac.digest(self.settings.derive_key(f"sign:{purpose}"), payload.encode(), "sha256")
        return base64.urlsafe_b64encode(digest[:18]).decode()

    def token_hash(self, token: str) -> bytes:
        """Stored form of API tokens and other bearer secrets."""
        return hmac.digest(self.settings.derive_key("api-token"), token.encode(), "sha256")
