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
from balancer.desired_state import DesiredState
from balancer.events import DesiredStateChangedEvent
from balancer.models import DesiredStateRevision


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


def desired_state_history(*, limit: int) -> list[DesiredStateRevision]:
    """The newest ``limit`` revisions, newest first, with who made them."""
    return list(
        DesiredStateRevision.objects.newest_first().select_related("created_by")[:limit]
    )


def desired_state_update(
    *, state: DesiredState, user: Any = None, note: str = ""
) -> DesiredStateRevision:
    """Store ``state`` as the newest revision and push it to the agents.

    A state equal to the current one adds no revision (nothing changed, and
    scripts that PUT the same state on every deploy would bury the history),
    but is published all the same: that restores the Redis key should it have
    been lost, and agents ignore a state they already apply.  Raises
    ``DesiredStateError`` for a value the database cannot hold.
    """
    with transaction.atomic():
        newest = desired_state_revision_current()
        if newest is not None and newest.to_state() == state:
            revision = newest
        else:
            revision = _revision_store(state=state, user=user, note=note)
    desired_state_publish(state=state)
    return revision


def desired_state_replace(
    *, data: Any, user: Any = None, note: str = ""
) -> DesiredStateRevision:
    """Replace the desired state with a Paddler ``PUT`` body.

    Raises ``DesiredStateError`` naming the field, and changes nothing then.
    """
    return desired_state_update(
        state=DesiredState.from_json(desired_state_completed(data=data)),
        user=user,
        note=note,
    )


def desired_state_completed(*, data: Any) -> Any:
    """A Paddler ``PUT`` body with the fields of ours that it left out.

    ``default_system_prompt`` is ours, not Paddler's: Paddler's clients do not
    know it and leave it out of what they put back, so a body without it
    keeps the current prompt instead of erasing it.
    """
    if isinstance(data, dict) and "default_system_prompt" not in data:
        current = desired_state_current()
        data = {**data, "default_system_prompt": current.default_system_prompt}
    return data


def desired_state_roll_back(
    *, revision_id: int, user: Any = None
) -> DesiredStateRevision:
    """Make revision ``revision_id``'s state current again, as a new revision.

    The history only grows: the new revision records who rolled back, when,
    and to which revision.  Raises ``DesiredStateRevision.DoesNotExist`` for
    an unknown id, and ``DesiredStateError`` for an old state that today's
    rules refuse (agents must never be sent what the API would reject).
    """
    target = DesiredStateRevision.objects.get(pk=revision_id)
    state = DesiredState.from_json(target.to_state().to_json())
    with transaction.atomic():
        revision = _revision_store(
            state=state, user=user, note=f"rolled back to revision {target.pk}"
        )
    desired_state_publish(state=state)
    return revision


def _revision_store(
    *, state: DesiredState, user: Any, note: str
) -> DesiredStateRevision:
    revision = DesiredStateRevision(
        # Token callers are anonymous: the revision then has no author.
        created_by=user if user is not None and user.is_authenticated else None,
        note=note,
        **DesiredStateRevision.fields_from_state(state),
    )
    revision.validate_for_storage()
    revision.save()
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
