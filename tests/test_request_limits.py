"""Oversized requests get 413 on every inference surface, before any slot."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import websockets

from tests.conftest import RedisServer, WebServer, socket_url, start_web

LIMIT = 2048


@pytest.fixture(scope="module")
def small_web(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebServer]:
    web = start_web(
        redis_server.url,
        tmp_path_factory.mktemp("limits"),
        PADDLER_MAX_REQUEST_BYTES=str(LIMIT),
    )
    yield web
    web.stop()


def big_prompt() -> bytes:
    return json.dumps({"raw_prompt": "x" * LIMIT, "max_tokens": 1}).encode()


PATHS = [
    "/api/v1/continue_from_raw_prompt",
    "/api/v1/continue_from_conversation_history",
    "/api/v1/generate_embedding_batch",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
]


@pytest.mark.parametrize("path", PATHS)
def test_body_over_the_limit_gets_413(small_web: WebServer, path: str) -> None:
    response = httpx.post(f"{small_web.url}{path}", content=big_prompt(), timeout=10)
    assert response.status_code == 413
    error = response.json()["error"]
    message = error["message"] if path.startswith("/v1/") else error["description"]
    assert f"larger than {LIMIT} bytes" in message


@pytest.mark.parametrize("path", [PATHS[0], PATHS[4]])
def test_chunked_body_without_a_length_is_measured_too(
    small_web: WebServer, path: str
) -> None:
    def chunks() -> Iterator[bytes]:
        body = big_prompt()
        for start in range(0, len(body), 512):
            yield body[start : start + 512]

    request = httpx.Request("POST", f"{small_web.url}{path}", content=chunks())
    assert "Content-Length" not in request.headers
    response = httpx.Client(timeout=10).send(request)
    assert response.status_code == 413


@pytest.mark.parametrize("binary", [False, True])
async def test_socket_message_over_the_limit_gets_a_413_envelope(
    small_web: WebServer, binary: bool
) -> None:
    message = json.dumps(
        {
            "Request": {
                "id": "huge",
                "request": {
                    "ContinueFromRawPrompt": {
                        "raw_prompt": "x" * LIMIT,
                        "max_tokens": 1,
                    }
                },
            }
        }
    )
    async with websockets.connect(socket_url(small_web)) as socket:
        await socket.send(message.encode() if binary else message)
        error = json.loads(await socket.recv())["Error"]
    assert error["request_id"] == "huge"
    assert error["error"]["code"] == 413


def test_body_between_djangos_default_limit_and_ours_is_read(web: WebServer) -> None:
    # Django alone refuses bodies over 2.5 MB with a bare 400; ours is 4 MiB.
    body = json.dumps(
        {"raw_prompt": "x", "max_tokens": 1, "padding": "x" * 3_000_000}
    ).encode()
    response = httpx.post(
        f"{web.url}/api/v1/continue_from_raw_prompt", content=body, timeout=30
    )
    assert response.status_code == 400
    assert response.json()["error"]["description"] == "padding: unknown field"
