"""The panel's playground shows reasoning and tool calls apart from the
answer, in a real browser (Chromium via Playwright).

The demo model neither thinks nor calls tools unasked, so the inference
socket's answer is played by Playwright's WebSocket route: the page gets the
envelopes an agent sends for a thinking, tool-calling model (the agent side
of these items is tested in ``test_output_split``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, WebSocketRoute, sync_playwright
from playwright.sync_api import expect as page_expect

from tests.support.web import WebServer, manage

CHROMIUM = "/usr/bin/chromium"
OPERATOR = ("playground", "playground-password-1")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox"]
        )
        yield launched
        launched.close()


def _answer(request_id: str) -> list[dict[str, Any]]:
    def response(generated: Any) -> dict[str, Any]:
        return {
            "Response": {
                "generated_by": "agent-x",
                "request_id": request_id,
                "response": {"GeneratedToken": generated},
            }
        }

    return [
        response({"ReasoningToken": "The user wants "}),
        response({"ReasoningToken": "the weather."}),
        response({"ContentToken": "Let me check."}),
        response({"ToolCallToken": '{"name": "get_weather", '}),
        response({"ToolCallToken": '"arguments": {"city": "Paris"}}'}),
        response(
            {
                "ToolCallParsed": [
                    {
                        "id": "call_1",
                        "name": "get_weather",
                        "arguments": {"ValidJson": {"city": "Paris"}},
                    }
                ]
            }
        ),
        response({"Done": {"usage": {"prompt_tokens": 9, "cached_prompt_tokens": 0}}}),
    ]


def test_playground_shows_reasoning_and_tool_calls_apart(
    browser: Browser, web: WebServer
) -> None:
    manage(
        web,
        "shell",
        "-c",
        "from django.contrib.auth.models import User;"
        f"User.objects.create_user({OPERATOR[0]!r}, password={OPERATOR[1]!r},"
        " is_staff=True)",
    )
    sent: list[dict[str, Any]] = []

    def agent(socket: WebSocketRoute) -> None:
        def reply(message: str | bytes) -> None:
            request = json.loads(message)
            sent.append(request)
            for envelope in _answer(request["Request"]["id"]):
                socket.send(json.dumps(envelope))

        socket.on_message(reply)

    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.route_web_socket("**/api/v1/inference_socket", agent)
    page.goto(f"{web.url}/")
    page.fill("#id_username", OPERATOR[0])
    page.fill("#id_password", OPERATOR[1])
    page.click("button[type=submit]")
    page.wait_for_url(f"{web.url}/")
    page.goto(f"{web.url}/prompt/")
    page.check("#enable-thinking")
    tool = {"type": "function", "function": {"name": "get_weather"}}
    page.fill("#tools-json", json.dumps([tool]))
    page.fill("#chat-input", "Weather in Paris?")
    page.click("#send-button")

    bubble = page.locator(".bubble.assistant").last
    page_expect(bubble.locator(".text")).to_have_text("Let me check.")
    page_expect(bubble.locator("details.reasoning .body")).to_have_text(
        "The user wants the weather."
    )
    page_expect(bubble.locator("details.tool-calls .tool-call")).to_have_text(
        'get_weather({"city":"Paris"})'
    )
    page_expect(bubble.locator("details.tool-call-text .body")).to_have_text(
        '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    )
    page_expect(page.locator("#run-status")).to_contain_text("Done")
    params = sent[0]["Request"]["request"]["ContinueFromConversationHistory"]
    assert params["enable_thinking"] is True
    assert params["tools"] == [tool]
    assert errors == []
    context.close()
