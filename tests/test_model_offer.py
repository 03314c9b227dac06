"""What a model offers: its GGUF's templates (and their variants), BOS/EOS,
context length, and the formats detected in the template in use; the
agent reads them from a real GGUF (made with the ``gguf`` package) and the
panel's model page shows them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.test import Client, override_settings

from agents.engine import Engine
from agents.jobs import Generation, Output
from balancer import keys
from balancer.desired_state import InferenceParameters
from balancer.model_offer import (
    detect_reasoning_format,
    detect_tool_call_format,
    model_offer,
)
from tests.support.gguf_files import with_metadata
from tests.support.processes import wait_until
from tests.support.redis_server import RedisServer
from tests.support.web import WebServer

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"


@pytest.mark.parametrize(
    ("fixture", "tool_format", "reasoning_format"),
    [
        ("chatml_tools", "hermes", "think_tags"),
        ("llama3_tools", "llama3", "none"),
        ("mistral_tools", "mistral", "none"),
        ("harmony_tools", "harmony", "harmony"),
        ("deepseek_tools", "deepseek", "think_tags"),
        ("gemma_generation", "generic", "none"),
    ],
)
def test_formats_are_detected_from_the_template(
    fixture: str, tool_format: str, reasoning_format: str
) -> None:
    source = (FIXTURES / f"{fixture}.jinja").read_text()
    assert detect_tool_call_format(source) == tool_format
    assert detect_reasoning_format(source) == reasoning_format


def test_no_template_means_the_generic_format_and_no_reasoning() -> None:
    assert detect_tool_call_format(None) == "generic"
    assert detect_reasoning_format(None) == "none"


DEFAULT = "{{ bos_token }}DEFAULT:{{ messages[0].content }}"
TOOL_USE = "{{ bos_token }}TOOLS<tool_call>:{{ messages[0].content }}"
RAG = "{{ bos_token }}RAG:{{ documents[0].text }}"


@pytest.fixture(scope="module")
def templated_model(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_metadata(
        model_path,
        tmp_path_factory.mktemp("gguf") / "templated.gguf",
        {
            "tokenizer.chat_template": DEFAULT,
            "tokenizer.chat_template.tool_use": TOOL_USE,
            "tokenizer.chat_template.rag": RAG,
        },
    )


@pytest.fixture(scope="module")
def engine(templated_model: Path) -> Iterator[Engine]:
    def ignore(outputs: list[Output]) -> None:
        pass

    built = Engine(
        model_path=str(templated_model),
        slots=1,
        parameters=InferenceParameters(context_size=256, n_batch=64),
        chat_template_override=None,
        on_output=ignore,
        n_threads=1,
    )
    yield built
    built.close()


def _text(engine: Engine, job: Generation) -> str:
    tokens = engine.prompt_tokens(job)
    return "".join(engine._token_text(token) for token in tokens)


def test_the_agent_reads_the_models_templates_tokens_and_context(
    engine: Engine,
) -> None:
    assert engine.metadata["tokenizer.chat_template"] == DEFAULT
    assert engine.bos_token == "<bos>" and engine.eos_token == "<eos>"
    assert engine.chat_template is not None
    offer = model_offer(
        engine.metadata,
        template_in_use=engine.chat_template.source,
        uses_override=False,
        bos_token=engine.bos_token,
        eos_token=engine.eos_token,
    ).as_json()
    assert offer["chat_templates"] == ["default", "rag", "tool_use"]
    assert offer["context_length"] == 32768
    assert offer["architecture"] == "gemma3"
    assert offer["tool_call_format"] == "generic"


def test_a_request_with_tools_renders_with_the_tool_use_variant(
    engine: Engine,
) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    plain = Generation(request_id="a", max_tokens=1, conversation=messages)
    with_tools = Generation(
        request_id="b", max_tokens=1, conversation=messages, tools=[tool]
    )
    with_documents = Generation(
        request_id="c",
        max_tokens=1,
        conversation=messages,
        chat_template_kwargs={"documents": [{"text": "a document"}]},
    )
    assert _text(engine, plain) == "<bos>DEFAULT:Hi"
    assert _text(engine, with_tools) == "<bos>TOOLS<tool_call>:Hi"
    assert _text(engine, with_documents) == "<bos>RAG:a document"


def test_an_override_replaces_the_variants_too(engine: Engine) -> None:
    engine.use_chat_template("OVERRIDE:{{ messages[0].content }}")
    try:
        tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
        job = Generation(
            request_id="d",
            max_tokens=1,
            conversation=[{"role": "user", "content": "Hi"}],
            tools=[tool],
        )
        assert _text(engine, job) == "<bos>OVERRIDE:Hi"
    finally:
        engine.use_chat_template(None)


@pytest.fixture
def isolated_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with override_settings(REDIS_URL=redis_server.url):
        client = redis.Redis.from_url(redis_server.url)
        yield client
        client.delete(keys.agents_set(), keys.agent_status("a1"))
        client.delete(keys.agent_metadata("a1"))
        client.close()


def test_the_model_page_shows_what_the_model_offers(
    admin_client: Client, isolated_redis: redis.Redis
) -> None:
    offer = model_offer(
        {
            "general.architecture": "qwen3",
            "general.name": "Qwen3 Test",
            "qwen3.context_length": "40960",
            "tokenizer.chat_template": "<tool_call><think>",
            "tokenizer.chat_template.tool_use": "x",
        },
        template_in_use="<tool_call><think>",
        uses_override=False,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
    )
    isolated_redis.sadd(keys.agents_set(), "a1")
    isolated_redis.set(keys.agent_status("a1"), json.dumps({"name": "gpu-1"}))
    isolated_redis.set(
        keys.agent_metadata("a1"),
        json.dumps({"metadata": {}, "chat_template": None, "offer": offer.as_json()}),
    )
    page = admin_client.get("/model/").content.decode()
    assert "What the model of agent <strong>gpu-1</strong> offers" in page
    assert '<dd class="offer-context">40960</dd>' in page
    assert '<code class="offer-eos">&lt;|im_end|&gt;</code>' in page
    assert "<code>default</code>, <code>tool_use</code>" in page
    assert '<dd class="offer-tool-format"><code>hermes</code></dd>' in page
    assert '<dd class="offer-reasoning-format"><code>think_tags</code></dd>' in page


def test_a_running_agent_stores_what_its_model_offers(
    api_platform: WebServer, api_redis: RedisServer
) -> None:
    client = redis.Redis.from_url(api_redis.url, decode_responses=True)
    try:
        (agent_id,) = [str(member) for member in client.smembers(keys.agents_set())]
        raw = client.get(keys.agent_metadata(agent_id))
        assert raw is not None
        offer = json.loads(raw)["offer"]
    finally:
        client.close()
    # The test platform renders with the Gemma override: no markers of any
    # family, so the generic JSON form, and no reasoning.
    assert offer["uses_override"] is True
    assert offer["bos_token"] == "<bos>" and offer["eos_token"] == "<eos>"
    assert offer["context_length"] == 32768
    assert offer["chat_templates"] == []
    assert offer["tool_call_format"] == "generic"
    assert offer["reasoning_format"] == "none"


def test_an_agent_stores_its_metadata_again_when_redis_lost_it(
    api_platform: WebServer, api_redis: RedisServer
) -> None:
    """Redis can lose the key without any heartbeat failing (it lapsed after
    a late heartbeat, or Redis restarted empty behind a command the client
    retried): the agent's next heartbeat stores it again, as it does the
    report."""
    client = redis.Redis.from_url(api_redis.url, decode_responses=True)
    try:
        (agent_id,) = [str(member) for member in client.smembers(keys.agents_set())]
        key = keys.agent_metadata(agent_id)
        stored = client.get(key)
        assert stored is not None
        client.delete(key)
        wait_until(lambda: client.exists(key), 10, "the metadata stored again")
        assert client.get(key) == stored
        assert client.pttl(key) > 0
    finally:
        client.close()
