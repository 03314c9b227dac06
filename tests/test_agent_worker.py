"""The agent worker's units, in this process, against a real Redis.

The worker hosts the synthetic engine (tokens without a model): what is under
test is the worker itself, how it applies a desired state, turns channel-layer
messages into jobs and puts output and status into Redis.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import redis

from agents.worker import AgentWorker
from balancer import keys
from balancer.contract import OutputItem, RawPromptParams
from balancer.events import InferenceRequestEvent, expand_item
from tests.support.constants import GREEDY_PARAMETERS

INBOX = "paddler:test:worker-inbox"
WAIT_S = 10
DEEP_GRAMMAR = "root ::= " + "(" * 1_000 + '"a"' + ")" * 1_000


def state(**extra: Any) -> dict[str, Any]:
    return {
        "model": {"LocalToAgent": "/nowhere/synthetic.gguf"},
        "inference_parameters": dict(GREEDY_PARAMETERS),
        **extra,
    }


def request(request_id: str, **params: Any) -> InferenceRequestEvent:
    return {
        "type": "inference.request",
        "request_id": request_id,
        "reply_to": INBOX,
        "kind": "raw_prompt",
        "params": cast(
            RawPromptParams,
            {"raw_prompt": "Hi", "max_tokens": 3, "grammar": None, **params},
        ),
    }


@pytest.fixture
async def worker(isolated_redis: redis.Redis) -> AsyncIterator[AgentWorker]:
    isolated_redis.delete(INBOX)
    built = AgentWorker(name="in-process", slots=2, backend="synthetic")
    await built.connect()
    output = asyncio.create_task(built.output_loop())
    yield built
    await built.shutdown()
    output.cancel()
    await asyncio.gather(output, return_exceptions=True)
    await built.disconnect()
    isolated_redis.delete(INBOX)


async def items_until_final(
    client: redis.Redis, request_id: str
) -> tuple[list[OutputItem], dict[str, Any]]:
    """The output items of ``request_id`` in the inbox, up to its last one,
    and the batch that carried the last one."""
    items: list[OutputItem] = []
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while asyncio.get_running_loop().time() < deadline:
        raw = await asyncio.to_thread(client.blpop, [INBOX], 1)
        if raw is None:
            continue
        batch = json.loads(raw[1])
        for item in map(expand_item, batch["items"]):
            if item["request_id"] != request_id:
                continue
            items.append(item)
            if item["final"]:
                return items, batch
    raise AssertionError(f"no final item for {request_id} in {WAIT_S} s")


async def test_a_request_without_a_model_is_refused_with_503_in_redis(
    worker: AgentWorker, isolated_redis: redis.Redis
) -> None:
    worker.handle_message(request("early"))
    (item,), batch = await items_until_final(isolated_redis, "early")
    assert item["error"] == {"code": 503, "description": "agent has no model loaded"}
    assert batch["agent_id"] == worker.agent_id
    assert batch["agent_name"] == "in-process"


async def test_applying_a_state_starts_the_engine_and_reports_its_slots(
    worker: AgentWorker, isolated_redis: redis.Redis
) -> None:
    await worker.apply_state(state())
    assert worker.status.state_application_status == "Applied"
    await worker.publish_status()
    status = json.loads(isolated_redis.get(keys.agent_status(worker.agent_id)) or "")
    assert status["slots_total"] == 2
    assert status["state_application_status"] == "Applied"
    assert isolated_redis.get(keys.agent_slots(worker.agent_id)) == b"2"
    assert isolated_redis.sismember(keys.agents_set(), worker.agent_id)


async def test_a_request_reaches_its_inbox_as_tokens_then_done(
    worker: AgentWorker, isolated_redis: redis.Redis
) -> None:
    await worker.apply_state(state())
    worker.handle_message(request("r1", max_tokens=3))
    items, _ = await items_until_final(isolated_redis, "r1")
    tokens = [item["response"] for item in items[:-1]]
    assert tokens == [{"GeneratedToken": {"ContentToken": f" t{n}"}} for n in range(3)]
    done = items[-1]["response"]
    assert isinstance(done, dict) and "GeneratedToken" in done
    assert done["GeneratedToken"]["Done"]["usage"]["content_tokens"] == 3


async def test_a_grammar_too_complex_is_refused_before_the_engine(
    worker: AgentWorker, isolated_redis: redis.Redis
) -> None:
    await worker.apply_state(state())
    grammar = {"type": "gbnf", "grammar": DEEP_GRAMMAR, "root": "root"}
    worker.handle_message(request("deep", grammar=grammar))
    (item,), _ = await items_until_final(isolated_redis, "deep")
    assert item["error"] is not None
    assert item["error"]["code"] == 400
    assert "nests groups more than 100 deep" in item["error"]["description"]
    assert worker.engine is not None and worker.engine.slots_processing == 0


async def test_a_template_that_does_not_compile_is_not_applied(
    worker: AgentWorker,
) -> None:
    await worker.apply_state(
        state(
            chat_template_override={"content": "{% for %}"},
            use_chat_template_override=True,
        )
    )
    assert worker.engine is None
    assert worker.status.state_application_status == "AttemptedAndNotAppliable"
    (issue,) = worker.status.issues
    assert issue["ChatTemplateDoesNotCompile"]["template_content"] == "{% for %}"


async def test_a_new_system_prompt_keeps_the_running_engine(
    worker: AgentWorker,
) -> None:
    await worker.apply_state(state())
    engine = worker.engine
    await worker.apply_state(state(default_system_prompt="Be brief."))
    assert worker.engine is engine
    assert worker.status.state_application_status == "Applied"
    await worker.apply_state(
        state(inference_parameters={**GREEDY_PARAMETERS, "n_batch": 256})
    )
    assert worker.engine is not None and worker.engine is not engine


async def test_requests_of_a_web_process_missing_only_for_a_moment_run_on(
    worker: AgentWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after a Redis restart a live web process's heartbeat key is
    missing until it writes it again.  Checks that run close together then
    (every slot change wakes the heartbeat loop) must not take it for dead:
    its requests ran on, silently cancelled, and their clients got a 504."""
    await worker.apply_state(state())
    engine = worker.engine
    assert engine is not None
    worker.handle_message(request("long", max_tokens=10_000_000))
    await asyncio.sleep(0.05)
    # The inbox's web process has no heartbeat key in this Redis.
    await worker._cancel_orphans()
    await worker._cancel_orphans()
    await asyncio.sleep(0.2)
    assert "long" in engine.destinations()
    # Missing for longer than a heartbeat lives: the web process is gone.
    monkeypatch.setattr("agents.worker.WEB_GONE_AFTER_S", 0.1)
    await worker._cancel_orphans()
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while "long" in engine.destinations():
        assert asyncio.get_running_loop().time() < deadline, "never cancelled"
        await asyncio.sleep(0.05)
