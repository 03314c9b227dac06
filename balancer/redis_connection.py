"""Redis clients of the web tier and the agents, from the settings.

One place decides whether a client talks to ``REDIS_URL`` or asks Redis
Sentinel for the current master (``PADDLER_REDIS_SENTINELS``): a Sentinel
client finds the master again after a failover, on its next connection.
"""

from __future__ import annotations

from typing import Any, cast

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel


def async_client(*, retries: bool = True, **overrides: Any) -> aioredis.Redis:
    """An asyncio client with ``settings.REDIS_OPTIONS`` and ``overrides``.

    ``retries=False``: a command that loses its connection fails instead of
    being sent again on a new one, for a caller that must know (a
    subscription: the messages published while it reconnected are gone).
    """
    options: dict[str, Any] = dict(settings.REDIS_OPTIONS) | overrides
    if not retries:
        options |= {"retry": AsyncRetry(NoBackoff(), 0), "retry_on_error": []}
    if settings.PADDLER_REDIS_SENTINELS:
        sentinel = AsyncSentinel(  # type: ignore[no-untyped-call]
            settings.PADDLER_REDIS_SENTINELS,
            sentinel_kwargs=settings.REDIS_SENTINEL_OPTIONS,
        )
        return cast(
            aioredis.Redis,
            sentinel.master_for(
                settings.PADDLER_REDIS_SENTINEL_MASTER,
                redis_class=aioredis.Redis,
                **settings.REDIS_MASTER_OPTIONS,
                **options,
            ),
        )
    # A blocking pool: past PADDLER_REDIS_MAX_CONNECTIONS a command waits
    # for a connection to come back (at most ``REDIS_POOL_WAIT_S``) instead
    # of failing its request.
    options |= {
        "max_connections": settings.PADDLER_REDIS_MAX_CONNECTIONS,
        "timeout": settings.REDIS_POOL_WAIT_S,
    }
    pool = aioredis.BlockingConnectionPool.from_url(settings.REDIS_URL, **options)
    return aioredis.Redis.from_pool(pool)  # closing the client closes its pool


def sync_client(url: str, **overrides: Any) -> redis.Redis:
    """A synchronous client for ``url`` (``settings.REDIS_URL`` as a rule),
    or for the Sentinel master when sentinels are configured."""
    options: dict[str, Any] = {
        # As settings.REDIS_OPTIONS, with redis-py's synchronous retry.
        "socket_timeout": 30,
        "health_check_interval": 15,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=5),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        **overrides,
    }
    if settings.PADDLER_REDIS_SENTINELS:
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            settings.PADDLER_REDIS_SENTINELS,
            sentinel_kwargs=settings.REDIS_SENTINEL_OPTIONS,
        )
        return cast(
            redis.Redis,
            sentinel.master_for(  # type: ignore[no-untyped-call]
                settings.PADDLER_REDIS_SENTINEL_MASTER,
                redis_class=redis.Redis,
                **settings.REDIS_MASTER_OPTIONS,
                **options,
            ),
        )
    return redis.Redis.from_url(url, **options)
