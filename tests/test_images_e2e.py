"""Images end to end: a real web server, a real agent with the generated
projection, each API, and routing that sends images only where they are
served.

The pool has two agents: ``vision`` (the demo model and the test projection,
one slot) and ``text`` (the synthetic engine, eight slots, no images).  By
load alone every request would go to ``text``; a request with images must go
to ``vision`` and come back with its image tokens counted.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from PIL import Image

from balancer.images import data_url
from tests.support.fleet import Fleet
from tests.support.mmproj import model_width, write_test_mmproj
from tests.support.web import WebServer, socket_url

# The test projection's pooled grid: 16 positions per image.
IMAGE_TOKENS = 16
PADDLER = "/api/v1/continue_from_conversation_history"


def solid_png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, "PNG")
    return buffer.getvalue()


RED = solid_png((255, 0, 0))


class ImageServer:
    """Serves one real image, ``RED``, over HTTP on loopback."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(RED)))
                self.end_headers()
                self.wfile.write(RED)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def image_server() -> Iterator[ImageServer]:
    server = ImageServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def web(
    tmp_path_factory: pytest.TempPathFactory,
    greedy_state: dict[str, Any],
    model_path: Path,
    image_server: ImageServer,
) -> Iterator[WebServer]:
    tmp_path = tmp_path_factory.mktemp("images-e2e")
    projection = write_test_mmproj(
        tmp_path / "test-mmproj.gguf", text_width=model_width(model_path)
    )
    state = {**greedy_state, "multimodal_projection": {"LocalToAgent": str(projection)}}
    fleet = Fleet(tmp_path, state)
    try:
        server = fleet.web(
            PADDLER_IMAGE_FETCH_ALLOWED_HOSTS=f"127.0.0.1:{image_server.port}"
        )
        agents = [
            fleet.agent("vision", 1, "--threads", "1"),
            fleet.agent("text", 8, "--backend", "synthetic"),
        ]
        try:
            server.wait_for_ready_agents(2, timeout=180)
        except TimeoutError:
            raise RuntimeError(
                "\n".join(Path(a.log).read_text()[-3000:] for a in agents)
            ) from None
        yield server
    finally:
        fleet.stop()


def conversation(*turns: tuple[str, Any]) -> list[dict[str, Any]]:
    return [{"role": role, "content": content} for role, content in turns]


def with_image(text: str, url: str) -> list[dict[str, Any]]:
    return [
        {"type": "text", "text": text},
        {"type": "image_url", "image_url": {"url": url}},
    ]


def paddler(
    web: WebServer, messages: list[dict[str, Any]]
) -> tuple[str, dict[str, Any], str]:
    """The text, the usage and the agent of a Paddler HTTP answer."""
    response = httpx.post(
        f"{web.url}{PADDLER}",
        json={"conversation_history": messages, "max_tokens": 6},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    text, usage, agent = "", {}, ""
    for line in response.text.splitlines():
        item = json.loads(line)["Response"]
        agent = item["generated_by"]
        token = item["response"]["GeneratedToken"]
        text += token.get("ContentToken", "")
        if "Done" in token:
            usage = token["Done"]["usage"]
    assert usage, response.text
    return text, usage, agent


def test_images_go_to_the_agent_that_serves_them_and_are_counted(
    web: WebServer,
) -> None:
    for _ in range(3):
        _, usage, agent = paddler(
            web,
            conversation(
                ("user", with_image("What is this?", data_url("image/png", RED)))
            ),
        )
        assert agent == "vision"
        assert usage["input_image_tokens"] == IMAGE_TOKENS
        assert usage["prompt_tokens"] > 0
    # Text alone goes by load: to the agent with eight free slots.
    _, usage, agent = paddler(web, conversation(("user", "Hello")))
    assert agent == "text"
    assert usage["input_image_tokens"] == 0


def test_the_next_turn_with_the_same_image_is_served_from_cache(
    web: WebServer,
) -> None:
    image = data_url("image/png", RED)
    first = conversation(("user", with_image("Describe the colour.", image)))
    answer, usage, _ = paddler(web, first)
    later = [
        *first,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And?"},
    ]
    _, next_usage, agent = paddler(web, later)
    assert agent == "vision"
    assert next_usage["input_image_tokens"] == IMAGE_TOKENS
    # The text before and after the image was kept: the image was too.
    assert next_usage["cached_prompt_tokens"] >= usage["prompt_tokens"]


def test_openai_chat_fetches_an_http_image_and_answers(
    web: WebServer, image_server: ImageServer
) -> None:
    response = httpx.post(
        f"{web.url}/v1/chat/completions",
        json={
            "model": "default",
            "messages": [
                {
                    "role": "user",
                    "content": with_image("What is it?", image_server.url("/red.png")),
                }
            ],
            "max_tokens": 6,
        },
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] is not None
    assert body["usage"]["completion_tokens"] > 0


async def test_the_socket_carries_an_image_to_the_vision_agent(web: WebServer) -> None:
    request = {
        "Request": {
            "id": "img-1",
            "request": {
                "ContinueFromConversationHistory": {
                    "conversation_history": conversation(
                        ("user", with_image("Look.", data_url("image/png", RED)))
                    ),
                    "max_tokens": 4,
                }
            },
        }
    }
    async with websockets.connect(socket_url(web)) as socket:
        await socket.send(json.dumps(request))
        usage: dict[str, Any] = {}
        agent = ""
        while not usage:
            message = json.loads(await socket.recv())
            item = message["Response"]
            agent = item["generated_by"]
            token = item["response"]["GeneratedToken"]
            if "Done" in token:
                usage = token["Done"]["usage"]
    assert agent == "vision"
    assert usage["input_image_tokens"] == IMAGE_TOKENS
