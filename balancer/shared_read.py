"""A database read shared by the requests of a moment.

A burst of requests that each read the same rows for themselves, each in its
own request's thread, takes a database connection per request in flight (a
thread keeps its connection until its request ends, which for a stream may
be minutes): 256 at once took more than PostgreSQL's 100.  A ``SharedRead``
runs the read at most every ``max_age_s``, once for every request arriving
meanwhile, and gives its connection back at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from asgiref.sync import sync_to_async
from django.db import connection

T = TypeVar("T")


def _read_and_close(read: Callable[[], T]) -> tuple[T, float]:
    try:
        return read(), time.monotonic()
    finally:
        # Not inside a transaction of the caller's (a test's).
        if not connection.in_atomic_block:
            connection.close()


class SharedRead(Generic[T]):
    """The last result of ``read`` while younger than ``max_age_s``, and the
    read in flight that every caller meanwhile waits on.

    A failed read is not kept: the next caller reads again.  The read in
    flight belongs to the event loop that started it; a caller on another
    loop (a test's) starts its own.
    """

    def __init__(self, read: Callable[[], T], max_age_s: float) -> None:
        self.read = read
        self.max_age_s = max_age_s
        self._task: asyncio.Future[tuple[T, float]] | None = None
        self._stale = False

    async def get(self) -> T:
        task = self._task
        if task is None or self._stale or self._expired(task):
            self._stale = False
            task = asyncio.ensure_future(sync_to_async(_read_and_close)(self.read))
            self._task = task
        value, _ = await asyncio.shield(task)
        return value

    def forget(self) -> None:
        """The next caller reads again (what was read has changed)."""
        self._stale = True

    def _expired(self, task: asyncio.Future[tuple[T, float]]) -> bool:
        if task.get_loop() is not asyncio.get_running_loop():
            return True
        if not task.done():
            return False
        if task.cancelled() or task.exception() is not None:
            return True
        return time.monotonic() - task.result()[1] >= self.max_age_s
