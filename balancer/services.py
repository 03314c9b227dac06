"""Desired-state changes: stored as a revision of a pool, then pushed to the
pool's agents; pools themselves: created, aliased, deleted."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction

from balancer import keys, redis_connection
from balancer.desired_state import DesiredState
from balancer.events import DesiredStateChangedEvent
from balancer.models import DesiredStateRevision, Pool
from balancer.pools import (
    DEFAULT_POOL,
    PoolError,
    check_alias,
    check_pool_name,
)


def sync_redis() -> redis.Redis:
    return _sync_redis(settings.REDIS_URL)


@lru_cache(maxsize=4)
def _sync_redis(url: str) -> redis.Redis:
    return redis_connection.sync_client(url)


class PoolNotFound(Exception):
    """No pool has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no pool named {name!r}")
        self.name = name


def _pool_row(name: str) -> Pool:
    """The pool ``name``; ``default`` is made when missing (a flushed
    database), any other raises ``PoolNotFound``."""
    if name == DEFAULT_POOL:
        pool, _ = Pool.objects.get_or_create(name=DEFAULT_POOL)
        return pool
    try:
        return Pool.objects.get(name=name)
    except Pool.DoesNotExist:
        raise PoolNotFound(name) from None


def desired_state_revision_current(
    *, pool: str = DEFAULT_POOL
) -> DesiredStateRevision | None:
    return DesiredStateRevision.objects.filter(pool__name=pool).newest_first().first()


def desired_state_current(*, pool: str = DEFAULT_POOL) -> DesiredState:
    revision = desired_state_revision_current(pool=pool)
    return DesiredState() if revision is None else revision.to_state()


def desired_state_history(
    *, limit: int, pool: str = DEFAULT_POOL
) -> list[DesiredStateRevision]:
    """The newest ``limit`` revisions of a pool, newest first, with who made
    them."""
    return list(
        DesiredStateRevision.objects.filter(pool__name=pool)
        .newest_first()
        .select_related("created_by", "pool")[:limit]
    )


def desired_state_update(
    *,
    state: DesiredState,
    user: Any = None,
    note: str = "",
    pool: str = DEFAULT_POOL,
) -> DesiredStateRevision:
    """Store ``state`` as the pool's newest revision and push it to the pool's
    agents.

    A state equal to the current one adds no revision (nothing changed, and
    scripts that PUT the same state on every deploy would bury the history),
    but is published all the same: that restores the Redis key should it have
    been lost, and agents ignore a state they already apply.  Raises
    ``DesiredStateError`` for a value the database cannot hold, and
    ``PoolNotFound`` for an unknown pool.
    """
    with transaction.atomic():
        pool_row = _pool_row(pool)
        newest = desired_state_revision_current(pool=pool)
        if newest is not None and newest.to_state() == state:
            revision = newest
        else:
            revision = _revision_store(state=state, user=user, note=note, pool=pool_row)
    desired_state_publish(state=state, pool=pool)
    return revision


def desired_state_replace(
    *, data: Any, user: Any = None, note: str = "", pool: str = DEFAULT_POOL
) -> DesiredStateRevision:
    """Replace a pool's desired state with a Paddler ``PUT`` body.

    Raises ``DesiredStateError`` naming the field, and changes nothing then.
    """
    return desired_state_update(
        state=DesiredState.from_json(desired_state_completed(data=data, pool=pool)),
        user=user,
        note=note,
        pool=pool,
    )


def desired_state_completed(*, data: Any, pool: str = DEFAULT_POOL) -> Any:
    """A Paddler ``PUT`` body with the fields of ours that it left out.

    ``default_system_prompt`` is ours, not Paddler's: Paddler's clients do not
    know it and leave it out of what they put back, so a body without it
    keeps the pool's current prompt instead of erasing it.
    """
    if isinstance(data, dict) and "default_system_prompt" not in data:
        current = desired_state_current(pool=pool)
        data = {**data, "default_system_prompt": current.default_system_prompt}
    return data


def desired_state_roll_back(
    *, revision_id: int, user: Any = None
) -> DesiredStateRevision:
    """Make revision ``revision_id``'s state current again in its pool, as a
    new revision.

    The history only grows: the new revision records who rolled back, when,
    and to which revision.  Raises ``DesiredStateRevision.DoesNotExist`` for
    an unknown id, and ``DesiredStateError`` for an old state that today's
    rules refuse (agents must never be sent what the API would reject).
    """
    target = DesiredStateRevision.objects.select_related("pool").get(pk=revision_id)
    state = DesiredState.from_json(target.to_state().to_json())
    with transaction.atomic():
        revision = _revision_store(
            state=state,
            user=user,
            note=f"rolled back to revision {target.pk}",
            pool=target.pool,
        )
    desired_state_publish(state=state, pool=target.pool.name)
    return revision


def _revision_store(
    *, state: DesiredState, user: Any, note: str, pool: Pool
) -> DesiredStateRevision:
    revision = DesiredStateRevision(
        pool=pool,
        # Token callers are anonymous: the revision then has no author.
        created_by=user if user is not None and user.is_authenticated else None,
        note=note,
        **DesiredStateRevision.fields_from_state(state),
    )
    revision.validate_for_storage()
    revision.save()
    return revision


def desired_state_publish(*, state: DesiredState, pool: str = DEFAULT_POOL) -> None:
    """Tell a pool's agents what to apply.

    The Redis key is what an agent reads when it starts (or reconnects); the
    group message reaches the pool's agents running now.  If the group
    message is lost, a running agent keeps its current state until it
    restarts or the next change; the key is always written first, so nothing
    newer is lost.
    """
    payload = state.to_json()
    sync_redis().set(keys.desired_state(pool), json.dumps(payload))
    layer = get_channel_layer()
    assert layer is not None
    event: DesiredStateChangedEvent = {
        "type": "desired_state.changed",
        "state": payload,
    }
    async_to_sync(layer.group_send)(keys.agents_group(pool), dict(event))


def pool_list() -> list[Pool]:
    """Every pool, ``default`` first."""
    _pool_row(DEFAULT_POOL)
    pools = list(Pool.objects.all())
    return sorted(pools, key=lambda pool: (pool.name != DEFAULT_POOL, pool.name))


def pool_names() -> list[str]:
    return [pool.name for pool in pool_list()]


def pool_routes() -> dict[str, list[str]]:
    """Pool name -> its aliases: what ``pools.pool_for_model`` reads."""
    return {pool.name: list(pool.aliases) for pool in pool_list()}


def _check_aliases(aliases: list[str], *, pool: str) -> list[str]:
    """Valid, and taken by no other pool's name or alias.

    Two operators adding the same alias to two pools at the same moment
    could both pass this check; a request for that alias would then go to
    the pool that sorts first.  Rare, visible in the panel, and harmless.
    """
    checked = list(dict.fromkeys(check_alias(alias) for alias in aliases))
    for other in Pool.objects.exclude(name=pool):
        taken = {other.name, *other.aliases}.intersection(checked)
        if taken:
            raise PoolError(f"{sorted(taken)[0]!r} already names pool {other.name!r}")
    if pool in checked:
        raise PoolError(f"{pool!r} is the pool's own name, not an alias")
    return checked


def pool_create(
    *,
    name: str,
    aliases: list[str] | None = None,
    state: DesiredState | None = None,
    user: Any = None,
) -> Pool:
    """A new pool, with its first desired state when given.  Raises
    ``PoolError`` for a bad or taken name or alias."""
    check_pool_name(name)
    with transaction.atomic():
        # JSON containment has no lookup on SQLite: the pools are few.
        if any(name == p.name or name in p.aliases for p in Pool.objects.all()):
            raise PoolError(f"pool name {name!r} is already taken")
        pool = Pool.objects.create(
            name=name, aliases=_check_aliases(aliases or [], pool=name)
        )
    if state is not None:
        desired_state_update(state=state, user=user, note="pool created", pool=name)
    return pool


def pool_set_aliases(*, name: str, aliases: list[str]) -> Pool:
    with transaction.atomic():
        pool = _pool_row(name)
        pool.aliases = _check_aliases(aliases, pool=name)
        pool.save(update_fields=["aliases"])
    return pool


def pool_delete(*, name: str) -> None:
    """Delete a pool and its history.  Refused (``PoolError``) for the
    default pool and for a pool some agent still serves."""
    if name == DEFAULT_POOL:
        raise PoolError("the default pool cannot be deleted")
    serving = pool_agent_names(name)
    if serving:
        raise PoolError(
            f"pool {name!r} is served by agents {', '.join(serving)}; stop them first"
        )
    deleted, _ = Pool.objects.filter(name=name).delete()
    if not deleted:
        raise PoolNotFound(name)
    client = sync_redis()
    client.delete(
        keys.desired_state(name), keys.buffer(name), keys.buffer_holdouts(name)
    )


def pool_agent_names(name: str) -> list[str]:
    """The names of the registered agents that serve pool ``name``."""
    client = sync_redis()
    members = client.smembers(keys.agents_set())
    ids = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
    if not ids:
        return []
    reports = client.mget([keys.agent_status(agent_id) for agent_id in ids])
    names = []
    for raw in reports:
        if raw is None:
            continue
        report = json.loads(raw)
        if report.get("pool", DEFAULT_POOL) == name:
            names.append(str(report.get("name", "")))
    return sorted(names)
