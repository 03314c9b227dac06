"""The panel's views with Django's test client: access, CSRF, what they store.

The browser tests (test_panel.py) cover the pages end to end; these check what
a browser cannot see, against a real Redis.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client, override_settings

from balancer import keys
from balancer.chat_template import GEMMA_CHAT_TEMPLATE
from balancer.desired_state import DesiredState
from balancer.models import DesiredStateRevision
from balancer.panel.forms import DesiredStateForm
from balancer.request_log import RequestRecord
from balancer.services import desired_state_current, desired_state_update, pool_create
from tests.support.redis_server import RedisServer, channel_layers
from tests.support.staff import grant_operator_permissions

PAGES = ["/", "/model/", "/prompt/", "/requests/"]


@pytest.fixture
def isolated_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    layers = channel_layers(redis_server.url, "paddler:panel-test:")
    with override_settings(REDIS_URL=redis_server.url, CHANNEL_LAYERS=layers):
        client = redis.Redis.from_url(redis_server.url)
        client.delete(keys.desired_state(), keys.request_log())
        yield client
        client.delete(keys.desired_state(), keys.request_log())
        client.close()


@pytest.fixture
def operator(db: None) -> User:
    user = User.objects.create_user("op", password="op-password-1", is_staff=True)
    grant_operator_permissions(user)
    return user


@pytest.fixture
def staff_client(operator: User) -> Client:
    client = Client()
    client.force_login(operator)
    return client


def form_post(state: DesiredState, **changes: Any) -> dict[str, Any]:
    data = DesiredStateForm.initial_from(state)
    data["enable_embeddings"] = "on" if data["enable_embeddings"] else ""
    data.update(changes)
    return data


GEMMA_STATE = DesiredState.from_json(
    {
        "model": {"LocalToAgent": "/models/a.gguf"},
        "chat_template_override": {"content": GEMMA_CHAT_TEMPLATE},
        "use_chat_template_override": True,
    }
)


@pytest.mark.django_db
@pytest.mark.parametrize("path", PAGES)
def test_anonymous_visitors_are_sent_to_the_login_page(path: str) -> None:
    response = Client().get(path)
    assert response.status_code == 302
    assert response["Location"] == f"/login/?next={path}"


@pytest.mark.django_db
def test_the_dashboard_stream_refuses_visitors_who_are_not_staff() -> None:
    client = Client()
    assert client.get("/dashboard/stream").status_code == 401
    User.objects.create_user("viewer", password="viewer-password-1")
    client.login(username="viewer", password="viewer-password-1")
    assert client.get("/dashboard/stream").status_code == 401


def test_a_user_who_lost_staff_status_gets_the_login_page(
    staff_client: Client, operator: User, isolated_redis: redis.Redis
) -> None:
    assert staff_client.get("/login/")["Location"] == "/"
    operator.is_staff = False
    operator.save()
    assert staff_client.get("/requests/")["Location"] == "/login/?next=/requests/"
    response = staff_client.get("/login/?next=/requests/")
    assert response.status_code == 200
    assert b'name="password"' in response.content


def test_changes_need_the_csrf_token(operator: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    body = {"template": GEMMA_CHAT_TEMPLATE}
    assert client.post("/model/preview", body).status_code == 403
    client.get("/prompt/")  # sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    response = client.post("/model/preview", body, headers={"X-CSRFToken": token})
    assert response.status_code == 200
    assert response.json()["ok"] is True


def test_preview_renders_or_explains(staff_client: Client) -> None:
    rendered = staff_client.post(
        "/model/preview",
        {"template": GEMMA_CHAT_TEMPLATE, "default_system_prompt": "Be brief."},
    ).json()
    assert rendered["ok"] is True
    assert "Be brief." in rendered["rendered"]
    failed = staff_client.post("/model/preview", {"template": "{% if %}"}).json()
    assert failed["ok"] is False
    assert "does not compile" in failed["error"]


def test_saving_the_model_form_stores_a_revision_and_publishes_it(
    staff_client: Client, operator: User, isolated_redis: redis.Redis
) -> None:
    desired_state_update(state=GEMMA_STATE)
    response = staff_client.post(
        "/model/", form_post(GEMMA_STATE, temperature="0.3", default_system_prompt="Hi")
    )
    assert response.status_code == 302
    assert response["Location"] == "/"
    newest = DesiredStateRevision.objects.newest_first().first()
    assert newest is not None
    assert newest.created_by == operator
    assert newest.note == "panel"
    state = desired_state_current()
    assert state.inference_parameters.temperature == 0.3
    assert state.default_system_prompt == "Hi"
    published = json.loads(isolated_redis.get(keys.desired_state()) or b"null")
    assert published == state.to_json()


def test_an_invalid_form_saves_nothing_and_says_why_next_to_the_field(
    staff_client: Client, isolated_redis: redis.Redis
) -> None:
    desired_state_update(state=GEMMA_STATE)
    response = staff_client.post(
        "/model/", form_post(GEMMA_STATE, top_p="7", penalty_repeat="0")
    )
    assert response.status_code == 200
    assert DesiredStateRevision.objects.count() == 1
    form = response.context["form"]
    assert form.errors == {
        "top_p": ["Must be between 0 and 1."],
        "penalty_repeat": ["Must be above 0 and at most 100 (1: off)."],
    }
    assert b"Must be between 0 and 1." in response.content


def test_roll_back_saves_the_old_state_as_a_new_revision(
    staff_client: Client, isolated_redis: redis.Redis
) -> None:
    first = desired_state_update(state=GEMMA_STATE)
    changed = DesiredState.from_json(
        {**GEMMA_STATE.to_json(), "inference_parameters": {"top_k": 5}}
    )
    desired_state_update(state=changed)
    response = staff_client.post(f"/model/revisions/{first.pk}/roll_back")
    assert response.status_code == 302
    assert DesiredStateRevision.objects.count() == 3
    assert desired_state_current() == GEMMA_STATE
    published = json.loads(isolated_redis.get(keys.desired_state()) or b"null")
    assert published["inference_parameters"]["top_k"] == 80
    assert staff_client.post("/model/revisions/999/roll_back").status_code == 404
    assert staff_client.get(f"/model/revisions/{first.pk}/roll_back").status_code == 405


def logged_request(**fields: Any) -> RequestRecord:
    """A complete request log record, with ``fields`` set."""
    record: RequestRecord = {
        "id": "r",
        "parent_id": None,
        "kind": "conversation",
        "pool": "default",
        "agent_id": "",
        "agent": "",
        "slot": None,
        "matched_prefix_blocks": 0,
        "why": "",
        "retried": False,
        "prompt_tokens": 0,
        "cached_prompt_tokens": 0,
        "generated_tokens": 0,
        "queue_wait_ms": 0.0,
        "time_to_first_token_ms": None,
        "tokens_per_second": None,
        "duration_ms": 0.0,
        "outcome": "done",
        "finished_at": 0.0,
    }
    return cast(RequestRecord, {**record, **fields})


def test_requests_page_lists_the_log_newest_first_and_filters_it(
    staff_client: Client, isolated_redis: redis.Redis
) -> None:
    records = [
        {"id": "a", "outcome": "done", "agent": "one", "why": "cache match"},
        {"id": "b", "outcome": "504", "agent": "", "why": ""},
        {"id": "c", "outcome": "cancelled", "agent": "two", "why": "least busy"},
    ]
    for record in records:
        isolated_redis.lpush(
            keys.request_log(), json.dumps(logged_request(**record, finished_at=1e9))
        )
    # Neither is a record: the page skips them.
    isolated_redis.lpush(keys.request_log(), b"not json")
    isolated_redis.lpush(keys.request_log(), json.dumps({"id": "partial"}))
    rows = staff_client.get("/requests/").context["rows"]
    assert [row["id"] for row in rows] == ["c", "b", "a"]
    assert [row["badge"].tone for row in rows] == ["muted", "error", "ok"]
    errors = staff_client.get("/requests/?outcome=errors").context["rows"]
    assert [row["id"] for row in errors] == ["b"]
    fragment = staff_client.get("/requests/?outcome=done&rows=1")
    assert b"<html" not in fragment.content
    assert b"cache match" in fragment.content
    assert b"least busy" not in fragment.content


def test_saving_an_unchanged_form_adds_no_revision(
    staff_client: Client, isolated_redis: redis.Redis
) -> None:
    desired_state_update(state=GEMMA_STATE)
    response = staff_client.post("/model/", form_post(GEMMA_STATE), follow=True)
    assert response.redirect_chain == [("/model/", 302)]
    assert DesiredStateRevision.objects.count() == 1
    assert b"Nothing changed" in response.content


def test_an_api_key_is_shown_once_and_stored_hashed(staff_client: Client) -> None:
    from inference.models import InferenceApiKey

    response = staff_client.post("/api-keys/", {"name": "ci"})
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    plaintext = response.context["created"]
    assert plaintext.startswith("pdl_")
    key = InferenceApiKey.objects.get(name="ci")
    assert plaintext not in (key.digest, key.salt, key.prefix)
    assert key.matches(plaintext)
    listed = staff_client.get("/api-keys/")
    assert plaintext.encode() not in listed.content
    assert f"pdl_{key.prefix}_".encode() in listed.content

    refused = staff_client.post("/api-keys/", {"name": "  "})
    assert refused.context["form"].errors == {"name": ["Give the key a name."]}
    assert refused.context["created"] is None

    assert staff_client.post(f"/api-keys/{key.pk}/revoke").status_code == 302
    key.refresh_from_db()
    assert not key.is_active
    assert not key.matches(plaintext)
    assert staff_client.post("/api-keys/999/revoke").status_code == 404


@pytest.mark.django_db
def test_the_panel_shows_and_edits_the_pool_picked_in_the_top_bar(
    staff_client: Client, isolated_redis: redis.Redis
) -> None:
    pool_create(name="brief", aliases=["gpt-4o-mini"])
    desired_state_update(state=GEMMA_STATE)
    page = staff_client.get("/model/?pool=brief")
    assert page.status_code == 200
    assert b'<option value="brief" selected>' in page.content
    assert b"pool brief" in page.content
    # Saved to the brief pool only: the default pool keeps its state.
    brief_state = DesiredState.from_json({"model": {"LocalToAgent": "/m/brief.gguf"}})
    response = staff_client.post("/model/", form_post(brief_state))
    assert response.status_code == 302
    assert desired_state_current(pool="brief") == brief_state
    assert desired_state_current() == GEMMA_STATE
    published = json.loads(isolated_redis.get(keys.desired_state("brief")) or b"null")
    assert published["model"] == {"LocalToAgent": "/m/brief.gguf"}
    # The pick lasts the session; an unknown pool falls back to the default.
    assert b"/m/brief.gguf" in staff_client.get("/model/").content
    assert b"pool default" in staff_client.get("/model/?pool=nowhere").content


@pytest.mark.django_db
def test_the_requests_page_lists_the_chosen_pools_requests(
    staff_client: Client, isolated_redis: redis.Redis
) -> None:
    pool_create(name="brief")
    for agent, pool in (("agent-of-default", "default"), ("agent-of-brief", "brief")):
        record = logged_request(agent=agent, pool=pool, outcome="done")
        isolated_redis.lpush(keys.request_log(), json.dumps(record))
    # A record written before pools existed belongs to the default pool.
    old = {k: v for k, v in logged_request(agent="agent-of-old").items() if k != "pool"}
    isolated_redis.lpush(keys.request_log(), json.dumps(old))
    shown = staff_client.get("/requests/?pool=brief&rows=1").content
    assert b"agent-of-brief" in shown
    assert b"agent-of-default" not in shown
    shown = staff_client.get("/requests/?pool=default&rows=1").content
    assert b"agent-of-default" in shown and b"agent-of-old" in shown
    assert b"agent-of-brief" not in shown


@pytest.mark.django_db
def test_the_dashboard_stream_refuses_an_unknown_pool(staff_client: Client) -> None:
    assert staff_client.get("/dashboard/stream?pool=nowhere").status_code == 404
