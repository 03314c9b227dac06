"""Existing databases upgrade in place when models move between apps.

The desired-state revisions moved from ``inference`` to ``balancer`` (the
ground floor).  The table keeps its name, so the move is Django state only; this
test walks a database back to before the move, writes a revision and a
permission there with the models of that time, and migrates forward again.
It runs on the suite's database, PostgreSQL in CI.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

LAST_BEFORE_MOVE = ("inference", "0003_merge_20261127_1111")
BEFORE_MOVE = [LAST_BEFORE_MOVE, ("balancer", None)]
# The other apps' models as they are today, beside the inference app's of then.
STATE_BEFORE_MOVE = [
    LAST_BEFORE_MOVE,
    ("contenttypes", "0002_remove_content_type_name"),
    ("auth", "0012_alter_user_first_name_max_length"),
]


def _migrate(targets: list[tuple[str, str | None]]) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return MigrationExecutor(connection)


@pytest.mark.django_db(transaction=True)
def test_revisions_and_their_permissions_survive_the_move_to_balancer() -> None:
    latest = _migrate(BEFORE_MOVE).loader.graph.leaf_nodes()
    old = MigrationExecutor(connection).loader.project_state(STATE_BEFORE_MOVE).apps
    revision_model = old.get_model("inference", "DesiredStateRevision")
    user_model = old.get_model("auth", "User")
    permission_model = old.get_model("auth", "Permission")
    content_type_model = old.get_model("contenttypes", "ContentType")

    revision = revision_model.objects.create(
        note="before the move",
        model_kind="LocalToAgent",
        model_local_path="/models/old.gguf",
        context_size=4096,
    )
    content_type, _ = content_type_model.objects.get_or_create(
        app_label="inference", model="desiredstaterevision"
    )
    permission, _ = permission_model.objects.get_or_create(
        content_type=content_type,
        codename="add_desiredstaterevision",
        defaults={"name": "Can add desired state revision"},
    )
    operator = user_model.objects.create(username="operator", is_staff=True)
    operator.user_permissions.add(permission)

    _migrate(latest)

    from django.contrib.auth.models import User

    from balancer.models import DesiredStateRevision

    moved = DesiredStateRevision.objects.get(pk=revision.pk)
    assert moved.note == "before the move"
    assert moved.to_state().model.local_path == "/models/old.gguf"
    assert moved.to_state().inference_parameters.context_size == 4096
    assert DesiredStateRevision._meta.db_table == "inference_desiredstaterevision"
    # The permission granted before the move still applies, under the new app.
    assert User.objects.get(username="operator").has_perm(
        "balancer.add_desiredstaterevision"
    )
    # The database's own checks came along unchanged.
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(
            cursor, "inference_desiredstaterevision"
        )
    assert "inference_desiredstaterevision_model_source" in constraints


BEFORE_POOLS = [("balancer", "0001_initial")]


@pytest.mark.django_db(transaction=True)
def test_the_single_desired_state_becomes_the_default_pools_with_its_revisions() -> (
    None
):
    latest = _migrate([*BEFORE_POOLS]).loader.graph.leaf_nodes()
    old = MigrationExecutor(connection).loader.project_state(BEFORE_POOLS).apps
    revision_model = old.get_model("balancer", "DesiredStateRevision")
    revision_model.objects.all().delete()
    first = revision_model.objects.create(
        note="first",
        model_kind="LocalToAgent",
        model_local_path="/models/first.gguf",
    )
    second = revision_model.objects.create(
        note="second",
        model_kind="LocalToAgent",
        model_local_path="/models/second.gguf",
        temperature=0.2,
    )

    _migrate(latest)

    from balancer.models import DesiredStateRevision, Pool
    from balancer.services import desired_state_current, desired_state_history

    default = Pool.objects.get(name="default")
    assert set(DesiredStateRevision.objects.values_list("pool", flat=True)) == {
        default.pk
    }
    history = desired_state_history(limit=10)
    assert [revision.pk for revision in history] == [second.pk, first.pk]
    assert desired_state_current().model.local_path == "/models/second.gguf"
    assert desired_state_current().inference_parameters.temperature == 0.2
