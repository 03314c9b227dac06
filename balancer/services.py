"""Desired-state changes: stored as a revision, then pushed to every agent."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from balancer import keys
from balancer.events import DesiredStateChangedEvent
from inference.desired_state import DesiredState
from inference.models import DesiredStateRevision


def sync_redis() -> redis.Redis:
    return _sync_redis(settings.REDIS_URL)


@lru_cache(maxsize=4)
def _sync_redis(url: str) -> redis.Redis:
    # As settings.REDIS_OPTIONS, with redis-py's synchronous retry.
    return redis.Redis.from_url(
        url,
        socket_timeout=30,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=5),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


def desired_state_revision_current() -> DesiredStateRevision | None:
    return DesiredStateRevision.objects.newest_first().first()


def desired_state_current() -> DesiredState:
    revision = desired_state_revision_current()
    return DesiredState() if revision is None else revision.to_state()


def desired_state_update(
    *, state: DesiredState, user: Any = None, note: str = ""
) -> DesiredStateRevision:
    """Store ``state`` as the newest revision and push it to the agents."""
    with transaction.atomic():
        revision = DesiredStateRevision.objects.create(
            created_by=user if user is not None and user.is_authenticated else None,
            note=note,
            **DesiredStateRevision.fields_from_state(state),
        )
    desired_state_publish(state=state)
    return revision


def desired_state_publish(*, state: DesiredState) -> None:
    """Tell agents what to apply.

    The Redis key is what an agent reads when it starts (or reconnects); the
    group message reaches the agents running now.  If the group message is
    lost, a running agent keeps its current state until it restarts or the
    next change; the key is always written first, so nothing newer is lost.
    """
    payload = state.to_json()
    sync_redis().set(keys.desired_state(), json.dumps(payload))
    layer = get_channel_layer()
    assert layer is not None
    event: DesiredStateChangedEvent = {
        "type": "desired_state.changed",
        "state": payload,
    }
    async_to_sync(layer.group_send)(keys.AGENTS_GROUP, dict(event))
