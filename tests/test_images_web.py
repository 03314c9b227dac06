"""Images through every API of a real web server, with a real agent.

The agent serves the demo model without a multimodal projection, so a request
with images is answered at once with ``MultimodalNotSupported`` (no agent of
the pool serves images) on each API, after its images were checked and
fetched; malformed and oversized images are refused before that, naming the
part.  A fleet with no agent yet keeps a request with images in the buffer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from balancer.images import data_url
from inference.image_fetch import UNREACHABLE
from tests.support.fleet import Fleet
from tests.support.web import WebServer, socket_url
from tests.test_image_fetch import PNG, ImageServer

# The web server's limit on one image, small enough to cross in a test.
MAX_IMAGE = 4000
IMAGE = data_url("image/png", PNG)  # 1032 bytes
TOO_LARGE = data_url("image/png", PNG * 4)  # 4128 bytes
PADDLER = "/api/v1/continue_from_conversation_history"


@pytest.fixture(scope="module")
def image_server() -> Iterator[ImageServer]:
    server = ImageServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def web(
    tmp_path_factory: pytest.TempPathFactory,
    greedy_state: dict[str, Any],
    image_server: ImageServer,
) -> Iterator[WebServer]:
    fleet = Fleet(tmp_path_factory.mktemp("images"), greedy_state)
    try:
        server = fleet.web(
            PADDLER_MAX_IMAGE_BYTES=str(MAX_IMAGE),
            PADDLER_IMAGE_FETCH_ALLOWED_HOSTS=f"127.0.0.1:{image_server.port}",
            PADDLER_IMAGE_FETCH_TIMEOUT_MS="5000",
        )
        agent = fleet.agent("text-only", 1)
        try:
            server.wait_for_ready_agents(1, timeout=120)
        except TimeoutError:
            raise RuntimeError(Path(agent.log).read_text()[-3000:]) from None
        yield server
    finally:
        fleet.stop()


def parts(*urls: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": "What is in the picture?"}] + [
        {"type": "image_url", "image_url": {"url": url}} for url in urls
    ]


def paddler_body(*urls: str) -> dict[str, Any]:
    return {
        "conversation_history": [{"role": "user", "content": parts(*urls)}],
        "max_tokens": 4,
    }


def post_paddler(web: WebServer, *urls: str) -> httpx.Response:
    return httpx.post(f"{web.url}{PADDLER}", json=paddler_body(*urls), timeout=60)


def post_chat(web: WebServer, *urls: str) -> httpx.Response:
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": parts(*urls)}],
        "max_tokens": 4,
    }
    return httpx.post(f"{web.url}/v1/chat/completions", json=body, timeout=60)


def paddler_error(response: httpx.Response) -> tuple[int, str]:
    error = response.json()["error"]
    assert error["code"] == response.status_code
    return response.status_code, str(error["description"])


# ------------------------------------------------------- Paddler HTTP


def test_paddler_http_answers_400_multimodal_not_supported_at_once(
    web: WebServer,
) -> None:
    status, description = paddler_error(post_paddler(web, IMAGE))
    assert status == 400
    assert description.startswith("MultimodalNotSupported: ")
    # The agent is free: text goes on.
    text = httpx.post(
        f"{web.url}{PADDLER}",
        json={
            "conversation_history": [{"role": "user", "content": "Hi"}],
            "max_tokens": 2,
        },
        timeout=60,
    )
    assert text.status_code == 200
    assert '"Done"' in text.text


def test_paddler_http_names_a_bad_data_url(web: WebServer) -> None:
    response = post_paddler(web, IMAGE, "data:image/png;base64,###")
    assert paddler_error(response) == (
        400,
        "conversation_history[0].content[2].image_url.url: has a payload that "
        "is not valid base64",
    )


def test_paddler_http_answers_413_for_an_image_over_the_limit(web: WebServer) -> None:
    status, description = paddler_error(post_paddler(web, TOO_LARGE))
    assert status == 413
    assert description == (
        "conversation_history[0].content[1].image_url.url: is an image of 4128 "
        f"bytes, larger than PADDLER_MAX_IMAGE_BYTES ({MAX_IMAGE} bytes)"
    )


def test_paddler_http_fetches_an_allowed_url_before_routing(
    web: WebServer, image_server: ImageServer
) -> None:
    # Fetched (the server is on the allow-list), then refused for the agent.
    status, description = paddler_error(
        post_paddler(web, image_server.url("/image.png"))
    )
    assert (status, description.split(":")[0]) == (400, "MultimodalNotSupported")
    # A body over the limit, and an address not on the list, name the part.
    status, description = paddler_error(post_paddler(web, image_server.url("/endless")))
    assert status == 413
    assert (
        "content[1].image_url.url: is larger than PADDLER_MAX_IMAGE_BYTES"
        in description
    )
    loopback = f"http://localhost:{image_server.port}/image.png"
    assert paddler_error(post_paddler(web, loopback)) == (
        400,
        f"conversation_history[0].content[1].image_url.url: {UNREACHABLE}",
    )


# ------------------------------------------------------------- socket


async def socket_error(web: WebServer, body: dict[str, Any]) -> dict[str, Any]:
    async with websockets.connect(socket_url(web)) as socket:
        await socket.send(
            json.dumps(
                {
                    "Request": {
                        "id": "pic",
                        "request": {"ContinueFromConversationHistory": body},
                    }
                }
            )
        )
        envelope = json.loads(await socket.recv())
    assert envelope["Error"]["request_id"] == "pic", envelope
    error: dict[str, Any] = envelope["Error"]["error"]
    return error


async def test_socket_answers_multimodal_not_supported(web: WebServer) -> None:
    error = await socket_error(web, paddler_body(IMAGE))
    assert error["code"] == 400
    assert error["description"].startswith("MultimodalNotSupported: ")


async def test_socket_names_bad_and_oversized_images(web: WebServer) -> None:
    error = await socket_error(web, paddler_body("data:text/html;base64,aGk="))
    assert error["code"] == 400
    assert error["description"].startswith(
        "conversation_history[0].content[1].image_url.url: declares media type"
    )
    error = await socket_error(web, paddler_body(TOO_LARGE))
    assert error["code"] == 413


# ------------------------------------------------------------- OpenAI


def test_chat_completions_answers_multimodal_not_supported(web: WebServer) -> None:
    response = post_chat(web, IMAGE)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("messages", "multimodal_not_supported")
    assert error["message"].startswith("MultimodalNotSupported: ")


def test_chat_completions_names_bad_and_oversized_images(web: WebServer) -> None:
    response = post_chat(web, "data:image/png;base64,")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "messages[0].content[1].image_url.url"
    assert "empty payload" in error["message"]
    response = post_chat(web, TOO_LARGE)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "image_too_large"


def test_responses_api_takes_input_image(web: WebServer) -> None:
    body = {
        "model": "default",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is it?"},
                    {"type": "input_image", "image_url": IMAGE},
                ],
            }
        ],
        "max_output_tokens": 4,
    }
    response = httpx.post(f"{web.url}/v1/responses", json=body, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "multimodal_not_supported"


# ----------------------------------------------------- scale from zero


def test_with_no_agent_a_request_with_images_waits_in_the_buffer(
    quiet_web: WebServer,
) -> None:
    # quiet_web has no agent and gives up buffering after 2 s.
    response = httpx.post(
        f"{quiet_web.url}{PADDLER}", json=paddler_body(IMAGE), timeout=30
    )
    assert paddler_error(response) == (504, "Waiting for available slot timed out")
