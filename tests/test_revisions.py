"""The history of the desired state: revisions, roll back, and the admin."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from django.db import IntegrityError, transaction

from balancer import keys
from balancer.desired_state import DesiredState, DesiredStateError, ModelSource
from balancer.models import DesiredStateRevision
from balancer.services import (
    desired_state_current,
    desired_state_roll_back,
    desired_state_update,
)
from tests.support.constants import AUTH
from tests.support.staff import create_user, csrf_headers, log_in
from tests.support.web import WebServer, manage

STATE_A: dict[str, Any] = {
    "model": {"LocalToAgent": "/models/a.gguf"},
    "multimodal_projection": {"Url": {"url": "https://example.invalid/a-proj.gguf"}},
    "chat_template_override": {"content": "{{ messages[0].content }}"},
    "use_chat_template_override": True,
    "default_system_prompt": "You are A.",
    "inference_parameters": {"temperature": 0.1, "k_cache_dtype": "F16"},
}
STATE_B: dict[str, Any] = {
    "model": {
        "HuggingFace": {
            "repo_id": "org/model-b",
            "filename": "b.gguf",
            "revision": "v2",
        }
    },
    # Left out, the prompt of the state before would be kept.
    "default_system_prompt": "",
    "inference_parameters": {"context_size": 1024, "pooling_type": "Mean"},
}
ADMIN_REVISIONS = "/admin/balancer/desiredstaterevision/"


def wire(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` as GET returns it: every field, defaults filled in."""
    return DesiredState.from_json(state).to_json()


def revisions(web: WebServer, **params: Any) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{web.url}/api/v1/balancer_desired_state/revisions",
        params=params,
        headers=AUTH,
    )
    response.raise_for_status()
    listed: list[dict[str, Any]] = response.json()["revisions"]
    return listed


def roll_back(web: WebServer, revision_id: int, **kwargs: Any) -> httpx.Response:
    return httpx.post(
        f"{web.url}/api/v1/balancer_desired_state/revisions/{revision_id}/roll_back",
        **{"headers": AUTH, **kwargs},
    )


def current(web: WebServer) -> dict[str, Any]:
    """The whole state, our default system prompt included."""
    state: dict[str, Any] = httpx.get(
        f"{web.url}/api/v1/balancer_desired_state",
        params={"extensions": "true"},
        headers=AUTH,
    ).json()
    return state


def agent_wire(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` as agents are told to apply it (Paddler's agent state)."""
    return DesiredState.from_json(state).to_agent_json()


def applicable(web: WebServer) -> Any:
    return httpx.get(f"{web.url}/api/v1/balancer_applicable_state", headers=AUTH).json()


@pytest.fixture(scope="module")
def superuser(quiet_web: WebServer) -> Iterator[httpx.Client]:
    """A session of a superuser, who may see the history in the admin."""
    create_user(quiet_web, "history-admin", "history-admin-password")
    manage(
        quiet_web,
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model; "
        "get_user_model().objects.filter(username='history-admin')"
        ".update(is_superuser=True)",
    )
    client = log_in(quiet_web, "history-admin", "history-admin-password")
    yield client
    client.close()


@pytest.fixture(scope="module")
def operator(quiet_web: WebServer) -> Iterator[httpx.Client]:
    create_user(quiet_web, "history-operator", "history-password")
    client = log_in(quiet_web, "history-operator", "history-password")
    yield client
    client.close()


# ------------------------------------------------------------ through the API


def test_revisions_list_every_change_newest_first(quiet_web: WebServer) -> None:
    quiet_web.put_desired_state(STATE_A)
    quiet_web.put_desired_state(STATE_B)
    newest, older = revisions(quiet_web, limit=2)
    assert newest["id"] > older["id"]
    assert newest["state"] == wire(STATE_B)
    assert older["state"] == wire(STATE_A)
    for revision in (newest, older):
        assert revision["note"] == "API"
        # The token is no user.
        assert revision["created_by"] is None
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", revision["created_at"])
    assert newest["created_at"] >= older["created_at"]


def test_revision_list_is_limited(quiet_web: WebServer) -> None:
    quiet_web.put_desired_state(STATE_A)
    quiet_web.put_desired_state(STATE_B)
    assert len(revisions(quiet_web, limit=1)) == 1
    assert len(revisions(quiet_web)) >= 2
    for bad in ("0", "1001", "many"):
        response = httpx.get(
            f"{quiet_web.url}/api/v1/balancer_desired_state/revisions",
            params={"limit": bad},
            headers=AUTH,
        )
        assert response.status_code == 400
        assert response.json()["field"] == "limit"


def test_putting_the_current_state_again_adds_no_revision(
    quiet_web: WebServer,
) -> None:
    quiet_web.put_desired_state(STATE_A)
    before = revisions(quiet_web, limit=1)
    quiet_web.put_desired_state(current(quiet_web))
    assert revisions(quiet_web, limit=1) == before


def test_roll_back_makes_an_old_state_current_as_a_new_revision(
    quiet_web: WebServer,
) -> None:
    quiet_web.put_desired_state(STATE_A)
    quiet_web.put_desired_state(STATE_B)
    b, a = revisions(quiet_web, limit=2)
    response = roll_back(quiet_web, a["id"])
    assert response.status_code == 204
    assert current(quiet_web) == wire(STATE_A)
    # Agents are told, through the key they read and the group message.
    assert applicable(quiet_web) == agent_wire(STATE_A)
    rolled, kept_b, kept_a = revisions(quiet_web, limit=3)
    assert rolled["id"] > b["id"]
    assert rolled["note"] == f"rolled back to revision {a['id']}"
    assert rolled["state"] == a["state"]
    # The history only grows.
    assert (kept_b, kept_a) == (b, a)


def test_roll_back_to_an_unknown_revision_gets_404(quiet_web: WebServer) -> None:
    quiet_web.put_desired_state(STATE_A)
    before = revisions(quiet_web, limit=1)
    assert roll_back(quiet_web, 999_999_999).status_code == 404
    assert revisions(quiet_web, limit=1) == before


def test_roll_back_through_a_staff_session_names_the_operator(
    quiet_web: WebServer, operator: httpx.Client
) -> None:
    quiet_web.put_desired_state(STATE_A)
    quiet_web.put_desired_state(STATE_B)
    _, a = revisions(quiet_web, limit=2)
    path = f"/api/v1/balancer_desired_state/revisions/{a['id']}/roll_back"
    response = operator.post(path, headers=csrf_headers(operator))
    assert response.status_code == 204
    (rolled,) = revisions(quiet_web, limit=1)
    assert rolled["created_by"] == "history-operator"
    assert rolled["state"] == wire(STATE_A)


# ------------------------------------------------------------------ the admin


def test_admin_lists_revisions_readably(
    quiet_web: WebServer, superuser: httpx.Client
) -> None:
    quiet_web.put_desired_state(STATE_B)
    page = superuser.get(ADMIN_REVISIONS)
    assert page.status_code == 200
    assert "org/model-b/b.gguf@v2" in page.text
    assert "By model kind" in page.text
    (newest,) = revisions(quiet_web, limit=1)
    change = superuser.get(f"{ADMIN_REVISIONS}{newest['id']}/change/")
    assert change.status_code == 200
    assert "Inference parameters" in change.text
    # History is read-only: no save button, no adding, no deleting.
    assert 'name="_save"' not in change.text
    assert superuser.get(f"{ADMIN_REVISIONS}add/").status_code == 403
    assert superuser.get(f"{ADMIN_REVISIONS}{newest['id']}/delete/").status_code == 403


def test_admin_rolls_back_in_one_action(
    quiet_web: WebServer, superuser: httpx.Client
) -> None:
    quiet_web.put_desired_state(STATE_A)
    quiet_web.put_desired_state(STATE_B)
    _, a = revisions(quiet_web, limit=2)
    response = superuser.post(
        ADMIN_REVISIONS,
        data={
            "action": "roll_back",
            "_selected_action": [str(a["id"])],
            "csrfmiddlewaretoken": superuser.cookies["csrftoken"],
        },
    )
    assert response.status_code == 302, response.text
    (rolled,) = revisions(quiet_web, limit=1)
    assert rolled["note"] == f"rolled back to revision {a['id']}"
    assert rolled["created_by"] == "history-admin"
    assert current(quiet_web) == wire(STATE_A)
    assert applicable(quiet_web) == agent_wire(STATE_A)


# ------------------------------------------------- the model, without a server


def test_columns_hold_paddlers_defaults() -> None:
    # Fails when a parameter is added to InferenceParameters without a column,
    # or when a column's default drifts from Paddler's.
    assert DesiredStateRevision().to_state() == DesiredState()


@pytest.mark.django_db
def test_every_field_of_the_state_survives_the_columns() -> None:
    state = DesiredState.from_json(
        {
            **STATE_A,
            "model": STATE_B["model"],
            "inference_parameters": {
                "n_batch": 64,
                "context_size": 512,
                "embedding_batch_size": 8,
                "enable_embeddings": True,
                "image_resize_to_fit": 256,
                "k_cache_dtype": "F32",
                "v_cache_dtype": "Q4_0",
                "min_p": 0.2,
                "n_gpu_layers": -1,
                "penalty_frequency": 0.5,
                "penalty_last_n": 32,
                "penalty_presence": 0.1,
                "penalty_repeat": 1.3,
                "pooling_type": "Cls",
                "temperature": 1.5,
                "top_k": 7,
                "top_p": 0.5,
            },
        }
    )
    # Nothing is left at its default, so a column that drops a value shows.
    defaults = DesiredState()
    for name in ("model", "multimodal_projection", "inference_parameters"):
        assert getattr(state, name) != getattr(defaults, name)
    for parameter in dataclasses.fields(state.inference_parameters):
        assert getattr(state.inference_parameters, parameter.name) != getattr(
            defaults.inference_parameters, parameter.name
        )
    stored = DesiredStateRevision.objects.create(
        **DesiredStateRevision.fields_from_state(state)
    )
    assert DesiredStateRevision.objects.get(pk=stored.pk).to_state() == state


@pytest.mark.django_db
@pytest.mark.parametrize(
    "columns",
    [
        {"model_kind": "LocalToAgent", "model_local_path": "relative.gguf"},
        {"model_kind": "LocalToAgent", "model_url": "https://x.invalid/m.gguf"},
        {"multimodal_projection_kind": "Disk"},
        {"model_kind": "HuggingFace", "model_repo_id": "org/repo"},
        {"top_p": 1.5},
        {"context_size": 0},
        {"v_cache_dtype": "F8"},
        {"pooling_type": "Median"},
    ],
)
def test_the_database_refuses_what_agents_would_refuse(
    columns: dict[str, Any],
) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        DesiredStateRevision.objects.create(**columns)


@pytest.mark.django_db
def test_roll_back_refuses_a_state_todays_rules_reject(
    isolated_redis: redis.Redis,
) -> None:
    good = desired_state_update(
        state=DesiredState(model=ModelSource(kind="LocalToAgent", local_path="/a"))
    )
    # Stored before a rule existed: the database has no rule for temperature.
    old = DesiredStateRevision.objects.create(
        **{
            **DesiredStateRevision.fields_from_state(DesiredState()),
            "temperature": -1.0,
        }
    )
    with pytest.raises(DesiredStateError) as error:
        desired_state_roll_back(revision_id=old.pk)
    assert error.value.field == "inference_parameters.temperature"
    assert DesiredStateRevision.objects.count() == 2
    published = json.loads(isolated_redis.get(keys.desired_state()) or b"null")
    assert published == good.to_state().to_json()


@pytest.mark.django_db
def test_roll_back_adds_a_revision_and_publishes(isolated_redis: redis.Redis) -> None:
    first = desired_state_update(state=DesiredState.from_json(STATE_A), note="a")
    desired_state_update(state=DesiredState.from_json(STATE_B), note="b")
    rolled = desired_state_roll_back(revision_id=first.pk)
    assert rolled.pk not in (None, first.pk)
    assert rolled.note == f"rolled back to revision {first.pk}"
    assert desired_state_current() == first.to_state()
    assert DesiredStateRevision.objects.count() == 3
    published = json.loads(isolated_redis.get(keys.desired_state()) or b"null")
    assert published == wire(STATE_A)
