"""The management API on DRF: read-only operators, field errors, inference API
keys, the request log and the browsable API, against a real server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from balancer import keys, request_log
from balancer.request_log import RequestRecord
from tests.support.constants import AUTH
from tests.support.redis_server import RedisServer
from tests.support.staff import create_user, csrf_headers, log_in
from tests.support.web import WebServer, start_web

STATE = "/api/v1/balancer_desired_state"
REVISIONS = f"{STATE}/revisions"
KEYS = "/api/v1/inference_api_keys"
LOG = "/api/v1/request_log"


@pytest.fixture(scope="module")
def reader(quiet_web: WebServer) -> Iterator[httpx.Client]:
    """A staff session of a user without any permission: a read-only operator."""
    create_user(quiet_web, "drf-reader", "drf-reader-password", read_only=True)
    client = log_in(quiet_web, "drf-reader", "drf-reader-password")
    yield client
    client.close()


@pytest.fixture(scope="module")
def changer(quiet_web: WebServer) -> Iterator[httpx.Client]:
    create_user(quiet_web, "drf-changer", "drf-changer-password")
    client = log_in(quiet_web, "drf-changer", "drf-changer-password")
    yield client
    client.close()


def newest_revision_id(web: WebServer) -> int:
    response = httpx.get(f"{web.url}{REVISIONS}", params={"limit": 1}, headers=AUTH)
    revision_id: int = response.json()["revisions"][0]["id"]
    return revision_id


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", KEYS), ("POST", KEYS), ("POST", f"{KEYS}/1/revoke"), ("GET", LOG)],
)
def test_our_endpoints_answer_401_to_strangers(
    quiet_web: WebServer, method: str, path: str
) -> None:
    for headers in ({}, {"Authorization": "Bearer not-the-token"}):
        response = httpx.request(
            method, f"{quiet_web.url}{path}", json={"name": "x"}, headers=headers
        )
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "authentication required" in response.json()["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/agents",
        "/api/v1/buffered_requests",
        STATE,
        REVISIONS,
        "/api/v1/balancer_applicable_state",
        KEYS,
        LOG,
    ],
)
def test_a_read_only_operator_reads_everything(
    quiet_web: WebServer, reader: httpx.Client, path: str
) -> None:
    response = reader.get(path)
    assert response.status_code == 200, response.text


def test_a_read_only_operator_changes_nothing(
    quiet_web: WebServer, reader: httpx.Client
) -> None:
    quiet_web.put_desired_state({"inference_parameters": {"temperature": 0.5}})
    quiet_web.put_desired_state({"inference_parameters": {"temperature": 0.6}})
    state = reader.get(STATE).json()
    before = newest_revision_id(quiet_web)
    keys_before = httpx.get(f"{quiet_web.url}{KEYS}", headers=AUTH).json()
    headers = csrf_headers(reader)
    changed = {**state, "inference_parameters": {"temperature": 0.1}}
    refusals = [
        reader.put(STATE, json=changed, headers=headers),
        reader.post(f"{REVISIONS}/{before - 1}/roll_back", headers=headers),
        reader.post(KEYS, json={"name": "not mine to make"}, headers=headers),
    ]
    for response in refusals:
        assert response.status_code == 403, response.text
        assert "read-only" in response.json()["error"]
    assert newest_revision_id(quiet_web) == before
    assert reader.get(STATE).json() == state
    assert httpx.get(f"{quiet_web.url}{KEYS}", headers=AUTH).json() == keys_before


def test_an_operator_with_the_permission_changes_the_state(
    quiet_web: WebServer, changer: httpx.Client
) -> None:
    state = changer.get(STATE).json()
    temperature = 0.25 if state["inference_parameters"]["temperature"] != 0.25 else 0.3
    changed = {**state, "inference_parameters": {"temperature": temperature}}
    response = changer.put(STATE, json=changed, headers=csrf_headers(changer))
    assert response.status_code == 204, response.text
    after = changer.get(STATE).json()
    assert after["inference_parameters"]["temperature"] == temperature
    newest = changer.get(REVISIONS, params={"limit": 1}).json()["revisions"][0]
    assert newest["created_by"] == "drf-changer"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"inference_parameters": {"top_k": "many"}}, "inference_parameters.top_k"),
        ({"use_chat_template_override": "yes"}, "use_chat_template_override"),
        ({"model": {"Somewhere": "x"}}, "model"),
        ([1, 2], "body"),
    ],
)
def test_field_errors_are_named_by_field(
    quiet_web: WebServer, body: Any, field: str
) -> None:
    response = httpx.put(f"{quiet_web.url}{STATE}", json=body, headers=AUTH)
    assert response.status_code == 400
    error = response.json()
    assert error["field"] == field
    assert error["error"].startswith(f"{field}: ")
    # DRF's detail, by field, beside it.
    assert list(error["errors"]) == [field]


def test_query_parameters_are_validated_by_field(quiet_web: WebServer) -> None:
    cases: list[tuple[str, dict[str, Any], str]] = [
        (REVISIONS, {"limit": "lots"}, "limit"),
        (LOG, {"limit": 0}, "limit"),
        (LOG, {"kind": "poetry"}, "kind"),
        (LOG, {"cursor": "not-a-cursor"}, "cursor"),
    ]
    for path, params, field in cases:
        response = httpx.get(f"{quiet_web.url}{path}", params=params, headers=AUTH)
        assert response.status_code == 400, (path, params)
        assert response.json()["field"] == field


# ------------------------------------------------------------ API keys


@pytest.fixture
def keys_web(quiet_redis: RedisServer, tmp_path: Path) -> Iterator[WebServer]:
    # A server of its own: a database key closes its inference API.
    web = start_web(
        quiet_redis.url, tmp_path, PADDLER_BUFFERED_REQUEST_TIMEOUT_MS="500"
    )
    yield web
    web.stop()


def test_inference_api_keys_are_made_shown_once_and_revoked(
    keys_web: WebServer,
) -> None:
    prompt = {"raw_prompt": "Hi", "max_tokens": 1}
    raw_prompt = f"{keys_web.url}/api/v1/continue_from_raw_prompt"
    with httpx.Client(base_url=keys_web.url, headers=AUTH, timeout=10) as client:
        made = client.post(KEYS, json={"name": "ci"})
        assert made.status_code == 201, made.text
        assert made.headers["Cache-Control"] == "no-store"
        key = made.json()["key"]
        assert key.startswith(f"pdl_{made.json()['prefix']}_")
        listed = client.get(KEYS).json()["inference_api_keys"]
        assert [k["name"] for k in listed] == ["ci"]
        assert key not in json.dumps(listed)
        # The key works, and nothing else does now.  (No agent: the request
        # waits for a slot and times out, which is past authentication.)
        assert httpx.post(raw_prompt, json=prompt).status_code == 401
        with_key = {"Authorization": f"Bearer {key}"}
        assert httpx.post(raw_prompt, json=prompt, headers=with_key).status_code == 504
        revoked = client.post(f"{KEYS}/{made.json()['id']}/revoke")
        assert revoked.status_code == 200
        assert revoked.json()["is_active"] is False
        assert httpx.post(raw_prompt, json=prompt, headers=with_key).status_code == 504
        assert client.post(f"{KEYS}/999999/revoke").status_code == 404


def test_a_key_needs_a_name(quiet_web: WebServer) -> None:
    response = httpx.post(f"{quiet_web.url}{KEYS}", json={}, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["field"] == "name"


# ------------------------------------------------------------ request log


def record(number: int, **fields: Any) -> RequestRecord:
    base: RequestRecord = {
        "id": f"drf-{number}",
        "parent_id": None,
        "kind": "raw_prompt",
        "pool": "default",
        "agent_id": "agent-id-a",
        "agent": "drf-agent-a",
        "slot": 0,
        "matched_prefix_blocks": 0,
        "why": "least busy",
        "retried": False,
        "prompt_tokens": 3,
        "cached_prompt_tokens": 0,
        "generated_tokens": 2,
        "queue_wait_ms": 1.0,
        "time_to_first_token_ms": 5.0,
        "tokens_per_second": 100.0,
        "duration_ms": 20.0,
        "outcome": "done",
        "finished_at": time.time() + number,
    }
    return {**base, **fields}  # type: ignore[typeddict-item]


@pytest.fixture
def logged(quiet_redis: RedisServer) -> Iterator[redis.Redis]:
    """Twelve records of two agents of these tests, oldest pushed first (and
    no record of an earlier test's)."""
    client = redis.Redis.from_url(quiet_redis.url)
    client.delete(keys.request_log())
    with client.pipeline() as pipe:
        for number in range(12):
            outcome = ["done", "504", "cancelled"][number % 3]
            kind = "conversation" if number % 2 else "raw_prompt"
            agent = "drf-agent-b" if number >= 8 else "drf-agent-a"
            request_log.write(
                pipe,
                record(number, outcome=outcome, kind=kind, agent=agent),
                size=1000,
            )
        pipe.execute()
    yield client
    client.close()


def read_all(web: WebServer, **params: Any) -> tuple[list[str], int]:
    """Ids of every matching record, following ``next``; and the page count."""
    ids: list[str] = []
    pages = 0
    url: str | None = f"{web.url}{LOG}"
    query: dict[str, Any] | None = params
    while url is not None:
        body = httpx.get(url, params=query, headers=AUTH).json()
        ids += [r["id"] for r in body["results"] if r["id"].startswith("drf-")]
        url, query = body["next"], None
        pages += 1
    return ids, pages


def test_request_log_filters_by_outcome_agent_and_kind(
    quiet_web: WebServer, logged: redis.Redis
) -> None:
    everything, _ = read_all(quiet_web, agent="drf-agent-a")
    assert everything == [f"drf-{n}" for n in range(7, -1, -1)]
    errors, _ = read_all(quiet_web, agent="drf-agent-a", outcome="errors")
    assert errors == ["drf-7", "drf-4", "drf-1"]
    cancelled, _ = read_all(quiet_web, agent="drf-agent-b", outcome="cancelled")
    assert cancelled == ["drf-11", "drf-8"]
    conversations, _ = read_all(quiet_web, agent="drf-agent-b", kind="conversation")
    assert conversations == ["drf-11", "drf-9"]
    by_id, _ = read_all(quiet_web, agent="agent-id-a", outcome="504")
    assert by_id == ["drf-10", "drf-7", "drf-4", "drf-1"]


def test_request_log_pages_follow_their_cursor_as_new_records_arrive(
    quiet_web: WebServer, logged: redis.Redis
) -> None:
    first = httpx.get(
        f"{quiet_web.url}{LOG}",
        params={"agent": "drf-agent-a", "limit": 3},
        headers=AUTH,
    ).json()
    assert [r["id"] for r in first["results"]] == ["drf-7", "drf-6", "drf-5"]
    # Newer records push the older ones down the list: the cursor still
    # goes on from where the page ended.
    with logged.pipeline() as pipe:
        request_log.write(pipe, record(50), size=1000)
        pipe.execute()
    second = httpx.get(first["next"], headers=AUTH).json()
    assert [r["id"] for r in second["results"]] == ["drf-4", "drf-3", "drf-2"]
    rest, pages = read_all(quiet_web, agent="drf-agent-a", limit=3)
    assert rest[:1] == ["drf-50"]
    assert pages == 3


# ------------------------------------------------------------ browsable API


def test_the_browsable_api_works_for_staff_sessions(
    quiet_web: WebServer, changer: httpx.Client
) -> None:
    page = changer.get(STATE, headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "Django REST framework" in page.text
    assert "inference_parameters" in page.text
    # Paddler's clients send "Accept: */*" (or nothing): JSON.
    assert changer.get(STATE).headers["content-type"] == "application/json"


@pytest.mark.parametrize("content_type", ["application/json", None])
def test_an_empty_body_replaces_nothing(
    quiet_web: WebServer, content_type: str | None
) -> None:
    # DRF alone reads an empty body as {}: a valid state of defaults.
    before = newest_revision_id(quiet_web)
    headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
    response = httpx.put(f"{quiet_web.url}{STATE}", content=b"", headers=headers)
    assert response.status_code == 400
    assert response.json()["field"] == "body"
    assert newest_revision_id(quiet_web) == before


def test_a_body_of_another_type_gets_415(quiet_web: WebServer) -> None:
    response = httpx.put(
        f"{quiet_web.url}{STATE}",
        content=b"model=None",
        headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 415
    assert "error" in response.json()
