"""The management API against the real server, driven by paddler-client."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from paddler_client.client_management import ClientManagement
from paddler_client.error import HttpError

from tests.conftest import AUTH, WebServer


def management_client(web: WebServer) -> ClientManagement:
    return ClientManagement(web.url, http_client=httpx.AsyncClient(headers=AUTH))


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/agents",
        "/api/v1/buffered_requests",
        "/api/v1/balancer_desired_state",
        "/api/v1/balancer_applicable_state",
        "/metrics",
    ],
)
def test_management_endpoints_refuse_callers_without_the_token(
    web: WebServer, path: str
) -> None:
    assert httpx.get(f"{web.url}{path}").status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert httpx.get(f"{web.url}{path}", headers=wrong).status_code == 401
    assert httpx.get(f"{web.url}{path}", headers=AUTH).status_code == 200


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
        # Putting back what we got changes nothing the agent must reload for.
        await client.put_balancer_desired_state(state)
        again = await client.get_balancer_desired_state()
        assert again == state
    applicable = httpx.get(
        f"{platform.url}/api/v1/balancer_applicable_state", headers=AUTH
    ).json()
    assert applicable["model"] == greedy_state["model"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"inference_parameters": {"context_size": 0}}, "context_size"),
        ({"inference_parameters": {"top_p": 1.5}}, "top_p"),
        ({"inference_parameters": {"k_cache_dtype": "Q9"}}, "k_cache_dtype"),
        ({"inference_parameters": {"pooling_type": "Median"}}, "pooling_type"),
        ({"model": {"LocalToAgent": "relative/model.gguf"}}, "LocalToAgent"),
        (
            {"model": {"HuggingFace": {"repo_id": "no-slash", "filename": "m.gguf"}}},
            "repo_id",
        ),
        ({"unexpected": True}, "unexpected"),
    ],
)
def test_bad_desired_state_gets_400_and_changes_nothing(
    web: WebServer, change: dict[str, Any], field: str
) -> None:
    url = f"{web.url}/api/v1/balancer_desired_state"
    before = httpx.get(url, headers=AUTH).json()
    response = httpx.put(url, json={**before, **change}, headers=AUTH)
    assert response.status_code == 400
    assert field in response.json()["field"]
    assert httpx.get(url, headers=AUTH).json() == before


async def test_unknown_agent_gets_404(web: WebServer) -> None:
    async with management_client(web) as client:
        with pytest.raises(HttpError) as error:
            await client.get_model_metadata("no-such-agent")
        assert error.value.status_code == 404
