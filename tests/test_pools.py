"""Model pools end to end: two pools of the demo model, each under its own
desired state, on one web tier; OpenAI requests reach a pool by model name
or alias, Paddler requests by header or socket field, and a pool whose
buffer is full leaves the other serving."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from balancer import keys
from balancer.chat_template import GEMMA_CHAT_TEMPLATE
from tests.support.constants import AUTH, GREEDY_PARAMETERS, MODEL_PATH
from tests.support.fleet import Fleet, request_log
from tests.support.processes import wait_until
from tests.support.statsd import StatsdListener
from tests.support.web import WebServer, manage, socket_url

BRIEF_SYSTEM_PROMPT = "Answer in one word. " * 20
# The brief pool's own chat template: not the default pool's Gemma turns.
BRIEF_TEMPLATE = (
    "{% for m in messages %}### {{ m.role }}:\n{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}### assistant:\n{% endif %}"
)
BRIEF_CONTEXT = 256
MODEL_ID = MODEL_PATH.stem
# About 400 tokens: too long for the brief pool's context, not the default's.
LONG_PROMPT = "one two three four five six seven eight nine ten " * 40


@pytest.fixture(scope="module")
def statsd() -> Iterator[StatsdListener]:
    listener = StatsdListener()
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def pools(
    tmp_path_factory: pytest.TempPathFactory,
    greedy_state: dict[str, Any],
    statsd: StatsdListener,
) -> Iterator[tuple[Fleet, WebServer]]:
    root = tmp_path_factory.mktemp("pools")
    fleet = Fleet(root, greedy_state)
    template = root / "brief.jinja"
    template.write_text(BRIEF_TEMPLATE)
    try:
        web = fleet.web(
            PADDLER_MAX_BUFFERED_REQUESTS="1",
            PADDLER_BUFFERED_REQUEST_TIMEOUT_MS="20000",
            PADDLER_STATSD_ADDR=statsd.address,
            PADDLER_STATSD_INTERVAL_MS="200",
            PADDLER_STATSD_PREFIX="fleet",
        )
        parameters = {
            **GREEDY_PARAMETERS,
            "context_size": BRIEF_CONTEXT,
            "enable_embeddings": True,
        }
        output = manage(
            web,
            "set_desired_state",
            "--pool",
            "brief",
            "--alias",
            "gpt-4o-mini",
            "--local-model",
            str(MODEL_PATH),
            "--chat-template-file",
            str(template),
            "--system-prompt",
            BRIEF_SYSTEM_PROMPT,
            *(f"--param={name}={json.dumps(v)}" for name, v in parameters.items()),
        )
        assert "pool 'brief' created" in output
        fleet.agent("general", 1)
        fleet.agent("brief-agent", 1, "--pool", "brief")
        web.wait_for_ready_agents(2)
        yield fleet, web
    finally:
        fleet.stop()


def openai_client(web: WebServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{web.url}/v1", api_key="unused", max_retries=0)


def chat(web: WebServer, model: str) -> Any:
    return openai_client(web).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=3,
    )


def test_each_agent_reports_its_pool(pools: tuple[Fleet, WebServer]) -> None:
    fleet, _ = pools
    client = fleet.client()
    members = client.smembers(keys.agents_set())
    ids = [m.decode() if isinstance(m, bytes) else m for m in members]
    raw_reports = client.mget([keys.agent_status(agent_id) for agent_id in ids])
    reports = [json.loads(raw) for raw in raw_reports if raw is not None]
    client.close()
    assert {report["name"]: report["pool"] for report in reports} == {
        "general": "default",
        "brief-agent": "brief",
    }


def test_each_pools_agent_applies_its_pools_template(
    pools: tuple[Fleet, WebServer],
) -> None:
    _, web = pools
    templates = {
        agent["name"]: httpx.get(
            f"{web.url}/api/v1/agent/{agent['id']}/chat_template_override",
            headers=AUTH,
        ).json()["content"]
        for agent in web.agents()
    }
    assert templates["brief-agent"] == BRIEF_TEMPLATE
    assert templates["general"] == GEMMA_CHAT_TEMPLATE


def test_openai_requests_reach_the_pool_their_model_names(
    pools: tuple[Fleet, WebServer],
) -> None:
    fleet, web = pools
    default_reply = chat(web, MODEL_ID)
    by_alias = chat(web, "gpt-4o-mini")
    by_name = chat(web, "brief")
    # The brief pool's agent applies the brief pool's state: its system
    # prompt comes in front of the same conversation.
    assert by_alias.usage.prompt_tokens == by_name.usage.prompt_tokens
    assert by_alias.usage.prompt_tokens > default_reply.usage.prompt_tokens + 100
    served = [(r["pool"], r["agent"]) for r in request_log(fleet)[:3]]
    assert sorted(served) == [
        ("brief", "brief-agent"),
        ("brief", "brief-agent"),
        ("default", "general"),
    ]


def test_an_unknown_model_is_not_found(pools: tuple[Fleet, WebServer]) -> None:
    _, web = pools
    with pytest.raises(openai.NotFoundError) as raised:
        chat(web, "no-such-model")
    assert raised.value.code == "model_not_found"


def test_models_lists_every_pool_by_name_and_alias(
    pools: tuple[Fleet, WebServer],
) -> None:
    _, web = pools
    listed = [model.id for model in openai_client(web).models.list()]
    assert listed == [MODEL_ID, "brief", "gpt-4o-mini"]
    assert openai_client(web).models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"


def test_each_pool_bounds_prompts_by_its_own_context(
    pools: tuple[Fleet, WebServer],
) -> None:
    _, web = pools
    url = f"{web.url}/api/v1/continue_from_raw_prompt"
    brief = {"X-Paddler-Pool": "brief"}

    def last_line(response: httpx.Response) -> dict[str, Any]:
        assert response.status_code == 200, response.text
        line: dict[str, Any] = json.loads(response.text.splitlines()[-1])
        return line

    # The brief pool's agent applies its context of 256 tokens.
    body = {"raw_prompt": LONG_PROMPT, "max_tokens": 1}
    served = last_line(httpx.post(url, json=body, timeout=120))
    assert "Done" in served["Response"]["response"]["GeneratedToken"]
    refused = last_line(httpx.post(url, json=body, headers=brief, timeout=120))
    assert "context holds 256" in refused["Error"]["error"]["description"]
    # The web tier bounds the prompt by the pool's context before any agent
    # tokenizes it: too many characters for 256 tokens, not for 2048.
    huge = {"raw_prompt": "word " * (BRIEF_CONTEXT * 64 // 5 + 10), "max_tokens": 1}
    assert httpx.post(url, json=huge, headers=brief).status_code == 413
    with httpx.stream("POST", url, json=huge, timeout=120) as response:
        assert response.status_code == 200


def test_paddler_requests_pick_a_pool_by_header_or_socket_field(
    pools: tuple[Fleet, WebServer],
) -> None:
    _, web = pools
    url = f"{web.url}/api/v1/continue_from_raw_prompt"
    body = {"raw_prompt": "Hello", "max_tokens": 2}
    response = httpx.post(url, json=body, headers={"X-Paddler-Pool": "brief"})
    first = json.loads(response.text.splitlines()[0])
    assert first["Response"]["generated_by"] == "brief-agent"
    missing = httpx.post(url, json=body, headers={"X-Paddler-Pool": "nowhere"})
    assert missing.status_code == 404
    assert "nowhere" in missing.json()["error"]["description"]

    async def over_socket(pool: str | None) -> list[dict[str, Any]]:
        request: dict[str, Any] = {
            "id": "r1",
            "request": {"ContinueFromRawPrompt": body},
        }
        if pool is not None:
            request["pool"] = pool
        async with websockets.connect(socket_url(web)) as connection:
            await connection.send(json.dumps({"Request": request}))
            lines = []
            while True:
                line = json.loads(await connection.recv())
                lines.append(line)
                if "Error" in line or '"Done"' in json.dumps(line):
                    return lines

    lines = asyncio.run(over_socket("brief"))
    assert lines[0]["Response"]["generated_by"] == "brief-agent"
    lines = asyncio.run(over_socket(None))
    assert lines[0]["Response"]["generated_by"] == "general"
    (error,) = asyncio.run(over_socket("nowhere"))
    assert error["Error"]["error"]["code"] == 404


def test_a_full_pool_refuses_without_touching_the_other(
    pools: tuple[Fleet, WebServer],
) -> None:
    _, web = pools
    url = f"{web.url}/api/v1/continue_from_raw_prompt"
    endless = {"raw_prompt": "Count to one thousand: 1, 2, 3,", "max_tokens": 400}
    brief = {"X-Paddler-Pool": "brief"}

    async def run() -> tuple[int, int, str]:
        async with httpx.AsyncClient(timeout=120) as http:
            # The brief pool's one slot is taken, then its buffer of one.
            busy = await http.send(
                http.build_request("POST", url, json=endless, headers=brief),
                stream=True,
            )
            waiting = asyncio.create_task(
                http.post(url, json={**endless, "max_tokens": 1}, headers=brief)
            )

            async def buffered() -> bool:
                counts = await http.get(
                    f"{web.url}/api/v1/buffered_requests?pool=brief", headers=AUTH
                )
                return bool(counts.json()["buffered_requests_current"])

            while not await buffered():
                await asyncio.sleep(0.05)
            overflow = await http.post(url, json=endless, headers=brief)
            # The default pool has a buffer and agents of its own.
            other = await http.post(url, json={"raw_prompt": "Hi", "max_tokens": 2})
            await busy.aclose()
            await waiting
            return overflow.status_code, other.status_code, other.text

    overflow, other, text = asyncio.run(run())
    assert overflow == 503
    assert other == 200
    assert '"Done"' in text
    wait_until(
        lambda: all(a["slots_processing"] == 0 for a in web.agents()), 30, "idle"
    )


def test_metrics_count_each_pool_beside_the_fleet_totals(
    pools: tuple[Fleet, WebServer], statsd: StatsdListener
) -> None:
    _, web = pools
    url = f"{web.url}/api/v1/continue_from_raw_prompt"
    body = {"raw_prompt": "Hello", "max_tokens": 2}
    assert httpx.post(url, json=body, headers={"X-Paddler-Pool": "brief"}).is_success
    text = httpx.get(f"{web.url}/metrics", headers=AUTH).text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    brief, default = (("pool", "brief"),), (("pool", "default"),)
    assert samples["paddler_pool_slots_total", brief] == 1
    assert samples["paddler_pool_slots_total", default] == 1
    assert samples["paddler_slots_total", ()] == 2
    assert samples["paddler_pool_agents", brief] == 1
    assert samples["paddler_pool_requests_buffered", brief] == 0
    served = samples[
        "paddler_pool_requests_total",
        (("kind", "raw_prompt"), ("outcome", "done"), ("pool", "brief")),
    ]
    assert served >= 1
    assert (
        samples["paddler_requests_total", (("kind", "raw_prompt"), ("outcome", "done"))]
        > served
    )
    assert (
        samples["paddler_pool_tokens_total", (("pool", "brief"), ("type", "generated"))]
        >= 2
    )
    # StatsD: per pool, beside the fleet's totals.
    wait_until(
        lambda: statsd.latest("fleet.pool.brief.slots_total") == "1|g", 10, "gauge"
    )
    assert statsd.latest("fleet.slots_total") == "2|g"
    assert statsd.latest("fleet.pool.brief.requests.raw_prompt.done") == "1|c"
    assert statsd.latest("fleet.pool.default.slots_total") == "1|g"


def test_embeddings_come_from_the_pool_that_enables_them(
    pools: tuple[Fleet, WebServer],
) -> None:
    _, web = pools
    client = openai_client(web)
    result = client.embeddings.create(model="gpt-4o-mini", input=["a", "b"])
    assert [len(item.embedding) for item in result.data] == [640, 640]
    # The default pool's state leaves embeddings off.
    with pytest.raises(openai.APIError) as raised:
        client.embeddings.create(model=MODEL_ID, input=["a"])
    assert "embeddings are not enabled" in str(raised.value)


def test_the_management_api_lists_creates_aliases_and_deletes_pools(
    pools: tuple[Fleet, WebServer],
) -> None:
    _, web = pools
    api = f"{web.url}/api/v1"

    def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{api}{path}", headers=AUTH, timeout=30, **kwargs)

    listed = {p["name"]: p for p in call("GET", "/pools").json()["pools"]}
    assert listed["brief"]["aliases"] == ["gpt-4o-mini"]
    assert listed["brief"]["agents"] == ["brief-agent"]
    assert listed["default"]["agents"] == ["general"]
    state = {"model": {"LocalToAgent": "/models/spare.gguf"}}
    created = call(
        "POST",
        "/pools",
        json={"name": "spare", "aliases": ["spare-model"], "desired_state": state},
    )
    assert created.status_code == 201, created.text
    taken = call("POST", "/pools", json={"name": "other", "aliases": ["gpt-4o-mini"]})
    assert taken.status_code == 400
    assert "already names pool 'brief'" in taken.text
    # The pool's own desired state, revisions and applicable state.
    desired = call("GET", "/balancer_desired_state?pool=spare").json()
    assert desired["model"] == state["model"]
    assert call("GET", "/balancer_desired_state").json()["model"] != state["model"]
    changed = {**desired, "inference_parameters": {"temperature": 0.3}}
    assert call("PUT", "/balancer_desired_state?pool=spare", json=changed).is_success
    revisions = call("GET", "/balancer_desired_state/revisions?pool=spare").json()
    assert len(revisions["revisions"]) == 2
    applicable = call("GET", "/balancer_applicable_state?pool=spare").json()
    assert applicable["inference_parameters"]["temperature"] == 0.3
    assert call("GET", "/balancer_desired_state?pool=nowhere").status_code == 404
    assert call("GET", "/buffered_requests?pool=nowhere").status_code == 404
    # Aliases change; a pool goes only when no agent serves it.
    renamed = call("PATCH", "/pools/spare", json={"aliases": ["spare-2"]})
    assert renamed.json()["aliases"] == ["spare-2"]
    served = call("DELETE", "/pools/brief")
    assert served.status_code == 400
    assert "brief-agent" in served.text
    assert call("DELETE", "/pools/default").status_code == 400
    assert call("DELETE", "/pools/spare").status_code == 204
    assert call("GET", "/pools/spare").status_code == 404
    # The request log filters by pool.
    logged = call("GET", "/request_log?pool=brief").json()["results"]
    assert logged and {record["pool"] for record in logged} == {"brief"}
