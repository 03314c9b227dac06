"""Desired-state changes: stored as revisions, pushed to Redis for agents."""

from __future__ import annotations

import json

import pytest
import redis

from balancer import keys
from balancer.desired_state import DesiredState
from balancer.models import DesiredStateRevision
from balancer.services import desired_state_current, desired_state_update


@pytest.mark.django_db
def test_every_change_is_kept_as_a_revision_and_published(
    isolated_redis: redis.Redis,
) -> None:
    assert desired_state_current() == DesiredState()
    first = DesiredState.from_json({"model": {"LocalToAgent": "/models/a.gguf"}})
    second = DesiredState.from_json(
        {
            "model": {"LocalToAgent": "/models/b.gguf"},
            "inference_parameters": {"temperature": 0.2},
        }
    )
    desired_state_update(state=first, note="first")
    desired_state_update(state=second, note="second")
    assert desired_state_current() == second
    history = list(DesiredStateRevision.objects.newest_first())
    assert [revision.note for revision in history] == ["second", "first"]
    assert history[1].to_state() == first
    # Agents starting now read the newest state from Redis.
    published = json.loads(isolated_redis.get(keys.desired_state()) or b"null")
    assert published == second.to_json()
