"""Counting the tasks an event loop creates (``asyncio.create_task`` and
everything built on it, ``asyncio.wait_for`` on Python 3.11 among them)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class TaskCount:
    made = 0


@contextmanager
def tasks_counted() -> Iterator[TaskCount]:
    """Count the tasks the running loop creates inside the block (its task
    factory is put back after)."""
    loop = asyncio.get_running_loop()
    count = TaskCount()
    factory = loop.get_task_factory()

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        count.made += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(counting)
    try:
        yield count
    finally:
        loop.set_task_factory(factory)
