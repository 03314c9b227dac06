"""Requests no agent takes: 503 when the buffer is full, 504 when it waited
too long, as Error envelopes keyed by the client's id on the socket and in
OpenAI's shape on /v1.  No agent runs here at all."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import websockets

from tests.support.processes import stop_process
from tests.support.redis_server import RedisServer, start_redis
from tests.support.web import WebServer, socket_url, start_web


@pytest.fixture(scope="module")
def empty_fleet() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    stop_process(server.process)


@pytest.fixture(scope="module")
def no_buffer(
    empty_fleet: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebServer]:
    web = start_web(
        empty_fleet.url,
        tmp_path_factory.mktemp("no-buffer"),
        PADDLER_MAX_BUFFERED_REQUESTS="0",
    )
    yield web
    web.stop()


@pytest.fixture(scope="module")
def short_buffer(
    empty_fleet: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebServer]:
    web = start_web(
        empty_fleet.url,
        tmp_path_factory.mktemp("short-buffer"),
        PADDLER_BUFFERED_REQUEST_TIMEOUT_MS="300",
    )
    yield web
    web.stop()


REQUEST = json.dumps(
    {
        "Request": {
            "id": "mine",
            "request": {"ContinueFromRawPrompt": {"raw_prompt": "Hi", "max_tokens": 2}},
        }
    }
)


@pytest.mark.parametrize(
    ("server", "code", "description"),
    [
        ("no_buffer", 503, "Buffered requests overflow"),
        ("short_buffer", 504, "Waiting for available slot timed out"),
    ],
)
async def test_socket_request_no_agent_takes_ends_with_an_error_envelope(
    request: pytest.FixtureRequest, server: str, code: int, description: str
) -> None:
    web: WebServer = request.getfixturevalue(server)
    async with websockets.connect(socket_url(web)) as socket:
        await socket.send(REQUEST)
        envelope = json.loads(await socket.recv())
    assert envelope == {
        "Error": {
            "request_id": "mine",
            "error": {"code": code, "description": description},
        }
    }


@pytest.mark.parametrize(
    ("server", "code"), [("no_buffer", 503), ("short_buffer", 504)]
)
def test_openai_request_no_agent_takes_gets_an_openai_error(
    request: pytest.FixtureRequest, server: str, code: int
) -> None:
    web: WebServer = request.getfixturevalue(server)
    response = httpx.post(
        f"{web.url}/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "Hi"}]},
        timeout=10,
    )
    assert response.status_code == code
    assert response.json()["error"]["type"] == "server_error"
