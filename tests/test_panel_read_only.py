"""Read-only operators in the panel: staff without the change permissions see
every page, with nothing they could change offered, and changes refused."""

from __future__ import annotations

import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client

from balancer.desired_state import DesiredState
from balancer.models import DesiredStateRevision
from balancer.panel.forms import DesiredStateForm
from balancer.services import desired_state_update
from inference.models import InferenceApiKey
from inference.services import inference_api_key_create
from tests.support.staff import grant_operator_permissions

pytestmark = pytest.mark.django_db

STATE = DesiredState.from_json({"model": {"LocalToAgent": "/models/a.gguf"}})
OLDER = DesiredState.from_json({"model": {"LocalToAgent": "/models/b.gguf"}})


def client_of(*, may_change: bool) -> Client:
    user = User.objects.create_user(
        "reader" if not may_change else "changer",
        password="a-long-password",
        is_staff=True,
    )
    if may_change:
        grant_operator_permissions(user)
    client = Client()
    client.force_login(user)
    return client


def test_the_model_page_is_read_only_without_the_permission(
    isolated_redis: redis.Redis,
) -> None:
    older = desired_state_update(state=OLDER)
    desired_state_update(state=STATE)
    reader = client_of(may_change=False)
    page = reader.get("/model/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Read-only" in html
    assert "Save and apply" not in html
    assert f"/model/revisions/{older.pk}/roll_back" not in html
    form = page.context["form"]
    assert all(field.disabled for field in form.fields.values())
    # The page shows the state all the same.
    assert "/models/a.gguf" in html
    # And the changes a crafted post would make are refused.
    data = DesiredStateForm.initial_from(OLDER)
    data["enable_embeddings"] = ""
    assert reader.post("/model/", data).status_code == 403
    assert reader.post(f"/model/revisions/{older.pk}/roll_back").status_code == 403
    assert DesiredStateRevision.objects.count() == 2


def test_the_model_page_offers_changes_with_the_permission(
    isolated_redis: redis.Redis,
) -> None:
    older = desired_state_update(state=OLDER)
    desired_state_update(state=STATE)
    html = client_of(may_change=True).get("/model/").content.decode()
    assert "Save and apply" in html
    assert "Read-only" not in html
    assert f"/model/revisions/{older.pk}/roll_back" in html


def test_the_keys_page_is_read_only_without_the_permissions() -> None:
    key, _ = inference_api_key_create(name="kept")
    reader = client_of(may_change=False)
    html = reader.get("/api-keys/").content.decode()
    assert "kept" in html
    assert "Create key" not in html
    assert f"/api-keys/{key.pk}/revoke" not in html
    assert reader.post("/api-keys/", {"name": "sneaky"}).status_code == 403
    assert reader.post(f"/api-keys/{key.pk}/revoke").status_code == 403
    assert list(InferenceApiKey.objects.values_list("name", "revoked_at")) == [
        ("kept", None)
    ]


def test_the_keys_page_offers_changes_with_the_permissions() -> None:
    key, _ = inference_api_key_create(name="kept")
    html = client_of(may_change=True).get("/api-keys/").content.decode()
    assert "Create key" in html
    assert f"/api-keys/{key.pk}/revoke" in html
