"""Redis commands leave without a task of their own (``balancer.redis_writes``),
and a write that cannot leave still fails in time.  Real Redis, and real
sockets standing in for a Redis that stops reading or hangs up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from balancer import redis_connection, redis_writes
from tests.support.redis_server import RedisServer
from tests.support.tasks import tasks_counted

PING = b"*1\r\n$4\r\nPING\r\n"


def client(port: int, *, timeout: float = 30, single: bool = False) -> aioredis.Redis:
    """As the platform's clients are: a socket timeout, so a write is timed;
    no retry, so a failure shows; RESP2 and no client info, so a fake server
    needs to answer nothing before the first command."""
    return aioredis.Redis(
        port=port,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_error=[],
        protocol=2,
        driver_info=None,
        single_connection_client=single,
    )


def test_every_process_of_the_platform_writes_this_way() -> None:
    # Django's app registry is ready in the tests as in every process.
    assert redis_writes.installed()


async def test_a_command_makes_no_task(own_redis: RedisServer) -> None:
    redis = client(own_redis.port)
    await redis.ping()  # connected: later commands take the direct path
    try:
        with tasks_counted() as tasks:
            for n in range(20):
                await redis.set("k", n)
                assert await redis.get("k") == str(n).encode()
            await redis.eval("return redis.call('INCR', KEYS[1])", 1, "counter")
    finally:
        await redis.aclose()
    # redis-py's own path made one per command (asyncio.wait_for on 3.11).
    assert tasks.made == 0


async def test_the_platforms_own_clients_and_the_channel_layer_still_work(
    own_redis: RedisServer,
) -> None:
    from channels.layers import get_channel_layer
    from django.test import override_settings

    with override_settings(REDIS_URL=own_redis.url):
        redis = redis_connection.async_client()
        try:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.set("a", 1)
                pipe.incr("a")
                assert await pipe.execute() == [True, 2]
        finally:
            await redis.aclose()
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "hello", "n": 1})
    assert await layer.receive(channel) == {"type": "hello", "n": 1}


@asynccontextmanager
async def fake_redis(
    after_ping: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    """A server that answers the first PING, then does ``after_ping``."""
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(len(PING)) == PING
        writer.write(b"+PONG\r\n")
        await writer.drain()
        await after_ping(reader, writer)
        await done.wait()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        done.set()
        server.close()


@pytest.mark.timeout(30)
async def test_a_write_that_redis_does_not_read_times_out() -> None:
    async def stop_reading(reader: Any, writer: Any) -> None:
        pass

    async with fake_redis(stop_reading) as port:
        redis = client(port, timeout=0.5, single=True)
        try:
            assert await redis.ping()
            connection = redis.connection
            assert connection is not None
            # More than the kernel's buffers on both sides hold.
            with pytest.raises(RedisTimeoutError, match="Timeout writing to socket"):
                await redis.set("big", b"x" * (64 << 20))
        finally:
            await redis.aclose()
    assert not connection.is_connected


@pytest.mark.timeout(30)
async def test_a_write_to_a_redis_that_hung_up_fails() -> None:
    async def hang_up(reader: Any, writer: Any) -> None:
        writer.transport.abort()

    async with fake_redis(hang_up) as port:
        redis = client(port)
        try:
            assert await redis.ping()
            await asyncio.sleep(0.1)  # the reset has arrived
            with pytest.raises(RedisConnectionError):
                await redis.set("k", 1)
        finally:
            await redis.aclose()
