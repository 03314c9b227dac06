"""The management API against the real server, driven by paddler-client."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from paddler_client.client_management import ClientManagement
from paddler_client.error import HttpError

from tests.support.constants import AUTH, MANAGEMENT_ENDPOINTS
from tests.support.fleet import start_agent
from tests.support.processes import stop_process
from tests.support.redis_server import RedisServer
from tests.support.staff import create_user, csrf_headers, log_in, set_staff
from tests.support.web import WebServer, start_web

CHANGES = {"PUT", "POST"}


def management_client(
    web: WebServer, http_client: httpx.AsyncClient | None = None
) -> ClientManagement:
    return ClientManagement(
        web.url, http_client=http_client or httpx.AsyncClient(headers=AUTH)
    )


def newest_revision(web: WebServer) -> dict[str, Any]:
    response = httpx.get(
        f"{web.url}/api/v1/balancer_desired_state/revisions",
        params={"limit": 1},
        headers=AUTH,
    )
    response.raise_for_status()
    revision: dict[str, Any] = response.json()["revisions"][0]
    return revision


def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request; a stream is only opened (its status is all that matters)."""
    if path.endswith("/stream"):
        with client.stream(method, path, **kwargs) as response:
            return response
    return client.request(method, path, **kwargs)


def endpoint_path(platform: WebServer, template: str) -> tuple[str, dict[str, Any]]:
    """The concrete path, and the body a change sends (the current state)."""
    (agent,) = [a for a in platform.agents() if a["name"] == "agent-one"]
    path = template.format(agent=agent["id"], revision=newest_revision(platform)["id"])
    state = httpx.get(
        f"{platform.url}/api/v1/balancer_desired_state", headers=AUTH
    ).json()
    return path, ({"json": state} if path.endswith("balancer_desired_state") else {})


@pytest.fixture(scope="module")
def sessions(platform: WebServer) -> Iterator[dict[str, httpx.Client]]:
    """Logged-in sessions on the platform: a staff user and a user who is not."""
    create_user(platform, "operator", "operator-password")
    create_user(platform, "visitor", "visitor-password")
    clients = {
        "staff": log_in(platform, "operator", "operator-password"),
        "not staff": log_in(platform, "visitor", "visitor-password"),
    }
    # The admin lets only staff log in: demoted afterwards, the visitor keeps
    # a valid session of a user who is not staff.
    set_staff(platform, "visitor", False)
    yield clients
    for client in clients.values():
        client.close()


@pytest.mark.parametrize(("method", "template"), MANAGEMENT_ENDPOINTS)
def test_management_endpoints_answer_401_without_token_or_staff_session(
    platform: WebServer,
    sessions: dict[str, httpx.Client],
    method: str,
    template: str,
) -> None:
    path, body = endpoint_path(platform, template)
    before = newest_revision(platform)
    with httpx.Client(base_url=platform.url, timeout=10) as anonymous:
        assert call(anonymous, method, path, **body).status_code == 401
        wrong = {"Authorization": "Bearer not-the-token"}
        assert call(anonymous, method, path, headers=wrong, **body).status_code == 401
    visitor = sessions["not staff"]
    headers = csrf_headers(visitor) if method in CHANGES else {}
    assert call(visitor, method, path, headers=headers, **body).status_code == 401
    assert newest_revision(platform) == before


@pytest.mark.parametrize(("method", "template"), MANAGEMENT_ENDPOINTS)
def test_management_endpoints_work_with_the_token(
    platform: WebServer, method: str, template: str
) -> None:
    path, body = endpoint_path(platform, template)
    with httpx.Client(base_url=platform.url, headers=AUTH, timeout=10) as client:
        response = call(client, method, path, **body)
    assert response.status_code == (204 if method in CHANGES else 200)


@pytest.mark.parametrize(("method", "template"), MANAGEMENT_ENDPOINTS)
def test_management_endpoints_work_with_a_staff_session(
    platform: WebServer,
    sessions: dict[str, httpx.Client],
    method: str,
    template: str,
) -> None:
    path, body = endpoint_path(platform, template)
    staff = sessions["staff"]
    headers = csrf_headers(staff) if method in CHANGES else {}
    response = call(staff, method, path, headers=headers, **body)
    assert response.status_code == (204 if method in CHANGES else 200)


@pytest.mark.parametrize(
    ("method", "template"), [e for e in MANAGEMENT_ENDPOINTS if e[0] in CHANGES]
)
def test_changes_through_a_session_need_the_csrf_token(
    platform: WebServer,
    sessions: dict[str, httpx.Client],
    method: str,
    template: str,
) -> None:
    # Else any site a staff member visits could post a roll back in their name.
    path, body = endpoint_path(platform, template)
    before = newest_revision(platform)
    response = call(sessions["staff"], method, path, **body)
    assert response.status_code == 403
    assert newest_revision(platform) == before


async def test_official_client_lists_the_agent_and_its_model(
    platform: WebServer, greedy_state: dict[str, Any]
) -> None:
    async with management_client(platform) as client:
        snapshot = await client.get_agents()
        (agent,) = [a for a in snapshot.agents if a.name == "agent-one"]
        assert agent.slots_total == 2
        assert agent.desired_slots_total == 2
        assert agent.state_application_status == "Applied"
        assert agent.model_path == greedy_state["model"]["LocalToAgent"]
        assert agent.uses_chat_template_override is True
        assert agent.issues == []
        metadata = await client.get_model_metadata(agent.id)
        assert metadata is not None
        assert metadata.metadata["general.architecture"] == "gemma3"
        override = await client.get_chat_template_override(agent.id)
        assert override is not None
        assert override.content == greedy_state["chat_template_override"]["content"]
        buffered = await client.get_buffered_requests()
        assert buffered.buffered_requests_current == 0
        metrics = await client.get_metrics()
        assert "paddler_slots_total 2" in metrics


async def test_desired_state_round_trips_through_the_official_client(
    platform: WebServer, greedy_state: dict[str, Any]
) -> None:
    async with management_client(platform) as client:
        state = await client.get_balancer_desired_state()
        assert state.model.local_path == greedy_state["model"]["LocalToAgent"]
        assert state.inference_parameters.temperature == 0.0
        assert state.inference_parameters.context_size == 2048
        await client.put_balancer_desired_state(state)
        again = await client.get_balancer_desired_state()
        assert again == state
    applicable = httpx.get(
        f"{platform.url}/api/v1/balancer_applicable_state", headers=AUTH
    ).json()
    assert applicable["model"] == greedy_state["model"]


async def test_putting_the_same_state_back_does_not_reload_the_agent(
    platform: WebServer, session_tmp: Path
) -> None:
    # Agents compare the state they are sent with the one they apply.
    agent_log = session_tmp / "agent-agent-one.log"
    loads = agent_log.read_text().count(" serves ")
    async with management_client(platform) as client:
        watched = await watch(client.agents_stream(), lambda s: s.agents)
        state = await client.get_balancer_desired_state()
        await client.put_balancer_desired_state(state)
        await asyncio.sleep(2)
        await watched.stop()
    for _, agents in watched.seen:
        (agent,) = [a for a in agents if a.name == "agent-one"]
        assert agent.state_application_status == "Applied"
        assert agent.slots_total == 2
    assert agent_log.read_text().count(" serves ") == loads


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"inference_parameters": {"context_size": 0}}, "context_size"),
        ({"inference_parameters": {"n_batch": -1}}, "n_batch"),
        ({"inference_parameters": {"embedding_batch_size": 0}}, "embedding_batch"),
        ({"inference_parameters": {"top_p": 1.5}}, "top_p"),
        ({"inference_parameters": {"top_p": -0.1}}, "top_p"),
        ({"inference_parameters": {"k_cache_dtype": "Q9"}}, "k_cache_dtype"),
        ({"inference_parameters": {"pooling_type": "Median"}}, "pooling_type"),
        ({"inference_parameters": {"seed": 1}}, "inference_parameters.seed"),
        # Wider than any database column: refused, not a 500.
        ({"inference_parameters": {"context_size": 2**63}}, "context_size"),
        ({"model": {"LocalToAgent": "relative/model.gguf"}}, "LocalToAgent"),
        (
            {"model": {"HuggingFace": {"repo_id": "no-slash", "filename": "m.gguf"}}},
            "repo_id",
        ),
        (
            {
                "multimodal_projection": {
                    "HuggingFace": {"repo_id": "a/b/c", "filename": "p.gguf"}
                }
            },
            "multimodal_projection.HuggingFace.repo_id",
        ),
        ({"unexpected": True}, "unexpected"),
    ],
)
def test_bad_desired_state_gets_400_and_changes_nothing(
    web: WebServer, change: dict[str, Any], field: str
) -> None:
    url = f"{web.url}/api/v1/balancer_desired_state"
    before = httpx.get(url, headers=AUTH).json()
    revisions = httpx.get(f"{url}/revisions", headers=AUTH).json()
    response = httpx.put(url, json={**before, **change}, headers=AUTH)
    assert response.status_code == 400
    assert field in response.json()["field"]
    assert httpx.get(url, headers=AUTH).json() == before
    assert httpx.get(f"{url}/revisions", headers=AUTH).json() == revisions


@pytest.mark.parametrize(
    "body",
    [
        '{"inference_parameters": {"top_p": NaN}}',
        '{"inference_parameters": {"temperature": Infinity}}',
        '{"inference_parameters": {"temperature": 1e999}}',
    ],
)
def test_numbers_that_are_not_finite_are_refused(web: WebServer, body: str) -> None:
    # Python's json module reads these; NaN would pass "top_p <= 1" unnoticed,
    # an infinite temperature "temperature >= 0".
    url = f"{web.url}/api/v1/balancer_desired_state"
    response = httpx.put(url, content=body, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["field"] == "body"


async def test_unknown_agent_gets_404(web: WebServer) -> None:
    async with management_client(web) as client:
        with pytest.raises(HttpError) as error:
            await client.get_model_metadata("no-such-agent")
        assert error.value.status_code == 404


async def test_a_paddler_client_put_keeps_the_default_system_prompt(
    quiet_web: WebServer,
) -> None:
    # Paddler's clients do not know our default_system_prompt: what they put
    # back must not erase it.
    url = f"{quiet_web.url}/api/v1/balancer_desired_state"
    # Ours, so shown only when asked for: a strict Paddler client refuses
    # fields it does not know.
    ours = {"extensions": "true"}
    state = httpx.get(url, headers=AUTH).json()
    quiet_web.put_desired_state({**state, "default_system_prompt": "Be brief."})
    async with management_client(quiet_web) as client:
        paddler_state = await client.get_balancer_desired_state()
        paddler_state.inference_parameters.temperature = 0.3
        await client.put_balancer_desired_state(paddler_state)
    after = httpx.get(url, params=ours, headers=AUTH).json()
    assert after["inference_parameters"]["temperature"] == 0.3
    assert after["default_system_prompt"] == "Be brief."
    # Sent explicitly, it changes like any other field.
    quiet_web.put_desired_state({**after, "default_system_prompt": ""})
    changed = httpx.get(url, params=ours, headers=AUTH).json()
    assert changed["default_system_prompt"] == ""


# ------------------------------------------------------------ event streams


class Watched:
    """Snapshots of a stream as they arrive: (monotonic time, value)."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, Any]] = []
        self.task: asyncio.Task[None]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    def last(self) -> tuple[float, Any]:
        return self.seen[-1]

    async def first(
        self, predicate: Callable[[Any], bool], timeout: float, after: float = 0.0
    ) -> float:
        """When the first snapshot after ``after`` that matches arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for arrived, value in self.seen:
                if arrived >= after and predicate(value):
                    return arrived
            if self.task.done():
                self.task.result()
                raise AssertionError("the stream ended")
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no matching snapshot within {timeout}s")


async def watch(stream: Any, value: Callable[[Any], Any]) -> Watched:
    """Follow ``stream`` in a task; returns once the first snapshot is in."""
    watched = Watched()

    async def follow() -> None:
        async for snapshot in stream:
            watched.seen.append((time.monotonic(), value(snapshot)))

    watched.task = asyncio.create_task(follow())
    await watched.first(lambda _: True, timeout=10)
    return watched


async def when_polled(
    poll: Callable[[], Any], predicate: Callable[[Any], bool], timeout: float
) -> float:
    """When a plain GET, repeated every 20 ms, first sees ``predicate`` hold."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate(await poll()):
            return time.monotonic()
        await asyncio.sleep(0.02)
    raise TimeoutError(f"not seen within {timeout}s")


async def test_agents_stream_shows_an_agent_joining_and_leaving_within_a_second(
    quiet_web: WebServer, quiet_redis: RedisServer, tmp_path: Path
) -> None:
    def names(snapshot: Any) -> set[str]:
        return {agent.name for agent in snapshot.agents}

    async with management_client(quiet_web) as client:
        watched = await watch(client.agents_stream(), names)
        assert "agent-sse" not in watched.last()[1]
        agent = start_agent(quiet_redis.url, tmp_path, "agent-sse", 1)
        try:
            listed = await when_polled(
                client.get_agents, lambda s: "agent-sse" in names(s), 60
            )
            streamed = await watched.first(lambda n: "agent-sse" in n, 5)
            assert streamed - listed < 1.0
        finally:
            await asyncio.to_thread(agent.stop)
        # The agent deregisters before it exits.
        exited = time.monotonic()
        streamed = await watched.first(lambda n: "agent-sse" not in n, 5, listed)
        assert streamed - exited < 1.0
        await watched.stop()


async def test_buffered_requests_stream_follows_the_buffer_within_a_second(
    quiet_web: WebServer,
) -> None:
    # No agent serves a model here: a request waits in the buffer until the
    # buffer timeout (2 s on this server) ends it with 504.
    async with management_client(quiet_web) as client, httpx.AsyncClient() as http:
        watched = await watch(
            client.buffered_requests_stream(), lambda s: s.buffered_requests_current
        )
        assert watched.last()[1] == 0
        request = asyncio.create_task(
            http.post(
                f"{quiet_web.url}/api/v1/continue_from_raw_prompt",
                json={"raw_prompt": "Hello", "max_tokens": 4},
                timeout=30,
            )
        )
        buffered = await when_polled(
            client.get_buffered_requests,
            lambda s: s.buffered_requests_current == 1,
            10,
        )
        streamed = await watched.first(lambda count: count == 1, 5)
        assert streamed - buffered < 1.0
        assert (await request).status_code == 504
        gone = time.monotonic()
        streamed = await watched.first(lambda count: count == 0, 5, buffered)
        assert streamed - gone < 1.0
        await watched.stop()


def test_idle_streams_send_keep_alive_comments(quiet_web: WebServer) -> None:
    # This server sends one after 200 ms without a change (PADDLER_SSE_KEEPALIVE_MS).
    url = f"{quiet_web.url}/api/v1/buffered_requests/stream"
    lines: list[tuple[float, str]] = []
    with httpx.stream("GET", url, headers=AUTH, timeout=10) as response:
        assert response.headers["content-type"] == "text/event-stream"
        for line in response.iter_lines():
            lines.append((time.monotonic(), line))
            if sum(1 for _, text in lines if text == ": keep-alive") == 3:
                break
    assert lines[0][1] == 'data: {"buffered_requests_current": 0}'
    assert lines[-1][0] - lines[0][0] < 1.5


async def test_streams_end_cleanly_when_the_server_stops(
    quiet_redis: RedisServer, tmp_path: Path
) -> None:
    web = start_web(quiet_redis.url, tmp_path)
    try:
        async with management_client(web) as client:
            # A client that leaves, then one still there at shutdown.
            left = await watch(client.buffered_requests_stream(), lambda s: s)
            await left.stop()
            watched = await watch(client.agents_stream(), lambda s: s)
            await asyncio.to_thread(stop_process, web.process)
            # The official client's loop ends: the body was complete.
            await asyncio.wait_for(watched.task, 10)
    finally:
        web.stop()
    log = web.log.read_text()
    assert "Traceback" not in log
    assert not re.search(r"\b(ERROR|CRITICAL)\b", log), log
