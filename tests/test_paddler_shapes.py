"""The management and inference shapes as Paddler 4.1 has them (its serde
structs refuse unknown fields), against a real server."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from paddler_client.balancer_desired_state import BalancerDesiredState
from paddler_client.client_management import ClientManagement

from tests.support.constants import AUTH
from tests.support.web import WebServer

STATE = "/api/v1/balancer_desired_state"
APPLICABLE = "/api/v1/balancer_applicable_state"

# The fields of Paddler's structs (paddler_messaging, v4.1.0), each declared
# with #[serde(deny_unknown_fields)]: a strict client refuses any other.
BALANCER_DESIRED_STATE = {
    "chat_template_override",
    "inference_parameters",
    "model",
    "multimodal_projection",
    "use_chat_template_override",
}
AGENT_DESIRED_STATE = {
    "chat_template_override",
    "inference_parameters",
    "model",
    "multimodal_projection",
}
INFERENCE_PARAMETERS = {
    "n_batch",
    "context_size",
    "embedding_batch_size",
    "enable_embeddings",
    "image_resize_to_fit",
    "k_cache_dtype",
    "v_cache_dtype",
    "min_p",
    "n_gpu_layers",
    "penalty_frequency",
    "penalty_last_n",
    "penalty_presence",
    "penalty_repeat",
    "pooling_type",
    "temperature",
    "top_k",
    "top_p",
}
TEMPLATE = "{% for m in messages %}{{ m.content }}{% endfor %}"


def strictly_paddlers(state: dict[str, Any], fields: set[str]) -> None:
    """What a strict Paddler client checks before it reads the values."""
    assert set(state) == fields
    assert set(state["inference_parameters"]) == INFERENCE_PARAMETERS
    template = state["chat_template_override"]
    assert template is None or set(template) == {"content"}


def put(web: WebServer, state: dict[str, Any]) -> None:
    web.put_desired_state(state)


async def test_the_desired_state_round_trips_through_a_strict_paddler_client(
    quiet_web: WebServer,
) -> None:
    put(
        quiet_web,
        {
            "model": {"LocalToAgent": "/models/strict.gguf"},
            "chat_template_override": {"content": TEMPLATE},
            "use_chat_template_override": True,
            "default_system_prompt": "Be strict.",
            "inference_parameters": {"temperature": 0.4},
        },
    )
    url = f"{quiet_web.url}{STATE}"
    served = httpx.get(url, headers=AUTH).json()
    strictly_paddlers(served, BALANCER_DESIRED_STATE)
    async with ClientManagement(
        quiet_web.url, http_client=httpx.AsyncClient(headers=AUTH)
    ) as client:
        state = await client.get_balancer_desired_state()
        await client.put_balancer_desired_state(state)
        again = await client.get_balancer_desired_state()
    assert again == state
    assert BalancerDesiredState.model_validate(served) == state
    assert httpx.get(url, headers=AUTH).json() == served
    # Ours is served when asked for, and Paddler's PUT kept it.
    ours = httpx.get(url, params={"extensions": "true"}, headers=AUTH).json()
    assert ours == {**served, "default_system_prompt": "Be strict."}


@pytest.mark.parametrize("use", [True, False])
def test_the_applicable_state_is_what_agents_apply(
    quiet_web: WebServer, use: bool
) -> None:
    put(
        quiet_web,
        {
            "model": {"LocalToAgent": "/models/applied.gguf"},
            "chat_template_override": {"content": TEMPLATE},
            "use_chat_template_override": use,
            "default_system_prompt": "Not for Paddler's eyes.",
            "inference_parameters": {"top_k": 12},
        },
    )
    applicable = httpx.get(f"{quiet_web.url}{APPLICABLE}", headers=AUTH).json()
    strictly_paddlers(applicable, AGENT_DESIRED_STATE)
    assert applicable["model"] == {"LocalToAgent": "/models/applied.gguf"}
    assert applicable["multimodal_projection"] == "None"
    assert applicable["inference_parameters"]["top_k"] == 12
    # The override only when it is to be used, as Paddler's converter does.
    expected = {"content": TEMPLATE} if use else None
    assert applicable["chat_template_override"] == expected


def conversation(**fields: Any) -> dict[str, Any]:
    return {
        "add_generation_prompt": True,
        "conversation_history": [{"role": "user", "content": "Hi"}],
        "enable_thinking": False,
        "max_tokens": 4,
        **fields,
    }


TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.mark.parametrize(
    "fields",
    [
        {"parse_tool_calls": False},
        {"parse_tool_calls": False, "tools": [TOOL]},
        # Paddler parses only when there are tools: without, it changes nothing.
        {"parse_tool_calls": True},
        # The agent parses the calls (see tests/test_tool_calls*.py).
        {"parse_tool_calls": True, "tools": [TOOL]},
    ],
)
def test_parse_tool_calls_as_paddlers_clients_send_it_is_accepted(
    quiet_web: WebServer, fields: dict[str, Any]
) -> None:
    # No agent serves this server: a request that passed validation waits for
    # a slot until the buffer gives up (504).
    response = httpx.post(
        f"{quiet_web.url}/api/v1/continue_from_conversation_history",
        json=conversation(**fields),
        timeout=30,
    )
    assert response.status_code == 504, response.text
