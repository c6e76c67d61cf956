"""A lease in the database: with several hosts each running the background process, one of them
does a piece of work (building the public site) and the others stand by.

A holder renews its lease every round. When it stops renewing (the host is gone), the lease runs
out and the next process to ask takes it over. One conditional UPDATE takes or renews it, so two
processes can never both hold it; the first holder INSERTs the row.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import socket

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .db import transaction
from .models import BackgroundLease, utcnow

__all__ = ("give_up", "holder_name", "take")


def holder_name() -> str:
    """This process, as a lease holder: host, process id and a random part (ids are reused)."""
    return f"{socket.gethostname()[:120]}:{os.getpid()}:{secrets.token_hex(4)}"


async def take(sessionmaker: async_sessionmaker[AsyncSession], name: str, holder: str, seconds: float) -> bool:
    """Take or renew the lease ``name`` for ``seconds``; False while another holder has it."""
    now = utcnow()
    until = now + dt.timedelta(seconds=seconds)
    async with transaction(sessionmaker) as session:
        taken = await session.execute(
            update(BackgroundLease)
            .where(BackgroundLease.name == name, or_(BackgroundLease.holder == holder,
                                                     BackgroundLease.expires_at < now))
            .values(holder=holder, expires_at=until)
            .returning(BackgroundLease.name))
        if taken.first() is not None:
            return True
        if await session.get(BackgroundLease, name) is not None:
            return False
    try:
        async with transaction(sessionmaker) as session:
            session.add(BackgroundLease(name=name, holder=holder, expires_at=until))
    except IntegrityError:  # another process inserted it first
        return False
    return True


async def give_up(sessionmaker: async_sessionmaker[AsyncSession], name: str, holder: str) -> None:
    """Let the lease go at once (a clean stop), so another process need not wait for it to run out."""
    async with transaction(sessionmaker) as session:
        await session.execute(update(BackgroundLease)
                              .where(BackgroundLease.name == name, BackgroundLease.holder == holder)
                              .values(expires_at=utcnow() - dt.timedelta(seconds=1)))
