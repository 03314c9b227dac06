"""``SharedRead``: one database read for the requests of a moment."""

from __future__ import annotations

import asyncio
import threading

import pytest
from django.db import connection

from balancer.models import Pool
from balancer.shared_read import SharedRead


@pytest.mark.django_db(transaction=True)
async def test_concurrent_callers_share_one_read_whose_connection_goes_back() -> None:
    reads: list[bool] = []

    def read() -> list[str]:
        reads.append(True)
        names = list(Pool.objects.values_list("name", flat=True))
        assert connection.connection is not None
        return names

    shared = SharedRead(read, max_age_s=60)
    results = await asyncio.gather(*(shared.get() for _ in range(100)))
    assert len(reads) == 1
    assert all(result == results[0] for result in results)
    # The thread that read holds no connection afterwards.
    held: list[object] = []

    def connection_of_this_thread() -> None:
        held.append(connection.connection)

    from asgiref.sync import sync_to_async

    await sync_to_async(connection_of_this_thread)()
    # (Django never closes SQLite's in-memory test database: PostgreSQL,
    # CI's database, shows it.)
    if connection.vendor != "sqlite":
        assert held == [None]


async def test_a_result_is_kept_for_max_age_and_forget_reads_again() -> None:
    count = 0

    def read() -> int:
        nonlocal count
        count += 1
        return count

    shared = SharedRead(read, max_age_s=0.2)
    assert await shared.get() == 1
    assert await shared.get() == 1
    shared.forget()
    assert await shared.get() == 2
    await asyncio.sleep(0.25)
    assert await shared.get() == 3


async def test_a_failed_read_is_not_kept() -> None:
    failures = [RuntimeError("database down")]

    def read() -> str:
        if failures:
            raise failures.pop()
        return "rows"

    shared = SharedRead(read, max_age_s=60)
    with pytest.raises(RuntimeError, match="database down"):
        await shared.get()
    assert await shared.get() == "rows"


def test_each_event_loop_reads_for_itself() -> None:
    loops: list[int] = []

    def read() -> int:
        loops.append(threading.get_ident())
        return len(loops)

    shared = SharedRead(read, max_age_s=60)
    assert asyncio.run(shared.get()) == 1
    assert asyncio.run(shared.get()) == 2
