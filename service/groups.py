"""Requests that arrive together go to the database together.

Under load a process receives many requests of one kind at once, and each pays for its own round
trip to PostgreSQL (the socket write that wakes a backend was a fifth of a scan's time) and, for
a write, its own commit and its own turn at the row it changes (on SQLite, at the database). :func:`grouped` lets the first of
a kind go alone, at once, and gathers those that arrive while it is out; the next goes for all of
them together, in order of arrival. So under light load nothing waits, and under heavy load a
round trip, a commit and a row lock serve many requests.

What "together" means belongs to the caller: on PostgreSQL the scan reads many codes in one
SELECT (``service.fastpath``); on both databases applications and redemptions are written in one
transaction, and written again one by one when any of them refuses (``service.fastwrite``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ("grouped", "queued", "watching")

_GROUP_SIZE = 100
"""The most requests that go together; more wait for the next group."""


class _Group:
    """The requests of one kind that this process is sending or about to send."""

    def __init__(self) -> None:
        self.queued: list[tuple[Any, asyncio.Future[Any]]] = []
        self.writer: asyncio.Task[None] | None = None


_GROUPS: dict[tuple[asyncio.AbstractEventLoop, Hashable], _Group] = {}
_watchers: list[Callable[[Hashable, int], Awaitable[None]]] = []


@contextmanager
def watching(watcher: Callable[[Hashable, int], Awaitable[None]]) -> Iterator[None]:
    """Await ``watcher(key, size)`` before each send while the block runs: ``size`` 1 for an item
    sent alone (the first of a kind, or one of a group written again one by one), else the size of
    the group. The seam for tests: hold a send to let others arrive behind it, count, or raise
    there as the database would."""
    _watchers.append(watcher)
    try:
        yield
    finally:
        _watchers.remove(watcher)


def queued() -> int:
    """How many items wait behind a send, over every kind (for tests)."""
    return sum(len(group.queued) for group in _GROUPS.values())


async def _watched(key: Hashable, size: int) -> None:
    for watcher in list(_watchers):
        await watcher(key, size)


async def grouped(
    key: Hashable,
    item: Any,
    alone: Callable[[Any], Awaitable[Any]],
    together: Callable[[list[Any]], Awaitable[list[Any]]],
) -> Any:
    """``await alone(item)``, or its part of ``await together(items)`` when other items of the
    same ``key`` arrived while this process was sending the ones before them.

    ``together`` answers for each item, in order, what ``alone`` would; if it raises, each item of
    the group is sent alone instead, so every caller gets the answer (or the error) it would get
    alone. A group of one is sent alone."""
    key = (asyncio.get_running_loop(), key)
    group = _GROUPS.setdefault(key, _Group())
    answer = asyncio.get_running_loop().create_future()
    group.queued.append((item, answer))
    if group.writer is None:
        # A task of its own: a request that goes away must not take the others' answers with it.
        group.writer = asyncio.create_task(_send(key, group, alone, together))
    return await answer


async def _send(key: tuple[asyncio.AbstractEventLoop, Hashable], group: _Group,
                alone: Callable[[Any], Awaitable[Any]],
                together: Callable[[list[Any]], Awaitable[list[Any]]]) -> None:
    """The group's sender: takes what has queued, up to ``_GROUP_SIZE``, and sends it, until
    nothing is queued."""
    batch: list[tuple[Any, asyncio.Future[Any]]] = []
    try:
        while group.queued:
            batch, group.queued = group.queued[:_GROUP_SIZE], group.queued[_GROUP_SIZE:]
            answers: list[Any] | None = None
            if len(batch) > 1:
                try:
                    await _watched(key[1], len(batch))
                    answers = await together([item for item, _ in batch])
                except Exception:  # a refusal, a deadlock, a lost connection: one by one, as alone
                    answers = None
            for n, (item, answer) in enumerate(batch):
                try:
                    if answers is None:
                        await _watched(key[1], 1)
                    result = answers[n] if answers is not None else await alone(item)
                except Exception as exc:
                    if not answer.done():
                        answer.set_exception(exc)
                else:
                    if not answer.done():
                        answer.set_result(result)
    finally:
        group.writer = None
        for _, answer in batch + group.queued:  # left unanswered only if this task was cancelled
            if not answer.done():
                answer.cancel()
        if _GROUPS.get(key) is group:
            del _GROUPS[key]
