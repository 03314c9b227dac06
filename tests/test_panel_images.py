"""Images in the admin panel, in Chromium: the playground attaches them (file
picker and paste) and shows them, the dashboard says which agents serve them.

The fleet's agent serves the demo model without a multimodal projection, so
the playground's request with an image comes back with the real error of
that case, ``MultimodalNotSupported``; the test also reads the message the
page sent, to see the image go out as a ``data:`` URL part.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, WebSocket
from playwright.sync_api import expect as page_expect

from balancer import keys
from tests.support.fleet import Fleet
from tests.support.staff import grant_script
from tests.support.web import WebServer
from tests.test_panel import OPERATOR, Tab, browser, manage, open_tab

__all__ = ["browser"]  # the browser fixture, shared with test_panel

AGENT = "panel-images-agent"


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A real PNG of one colour (the browser decodes it to show it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * width
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, greedy_state: dict[str, Any]
) -> Iterator[Fleet]:
    built = Fleet(tmp_path_factory.mktemp("panel-images"), greedy_state)
    try:
        web = built.web()
        add_operator(web)
        agent = built.agent(AGENT, 1)
        try:
            web.wait_for_ready_agents(1, timeout=120)
        except TimeoutError:
            raise RuntimeError(agent.log.read_text()[-3000:]) from None
        yield built
    finally:
        built.stop()


def add_operator(web: WebServer) -> None:
    """The staff login ``OPERATOR``, with the model permissions."""
    manage(
        web,
        "from django.contrib.auth.models import User;"
        f"User.objects.create_user({OPERATOR[0]!r}, password={OPERATOR[1]!r},"
        " is_staff=True);" + grant_script(OPERATOR[0]),
    )


def operator_tab(browser: Browser, web: WebServer) -> Iterator[Tab]:
    """A tab logged in as ``OPERATOR``, closed at the end; the browser must
    have reported no errors."""
    opened = open_tab(browser, web)
    opened.goto("/")
    opened.log_in(*OPERATOR)
    opened.page.wait_for_url(f"{web.url}/")
    yield opened
    opened.page.context.close()
    assert opened.errors == [], "the browser reported errors"


@pytest.fixture
def tab(browser: Browser, fleet: Fleet) -> Iterator[Tab]:
    yield from operator_tab(browser, fleet.webs[0])


def test_playground_sends_picked_and_pasted_images_and_shows_them(
    tab: Tab, tmp_path: Path
) -> None:
    picked = tmp_path / "red.png"
    picked.write_bytes(png(8, 6, (220, 20, 20)))
    pasted = png(5, 5, (20, 20, 220))
    sent: list[dict[str, Any]] = []

    def on_socket(socket: WebSocket) -> None:
        socket.on(
            "framesent",
            lambda payload: (
                sent.append(json.loads(payload)) if isinstance(payload, str) else None
            ),
        )

    tab.page.on("websocket", on_socket)
    tab.goto("/prompt/")
    page = tab.page
    page.set_input_files("#image-input", str(picked))
    page_expect(page.locator("#attachments img")).to_have_count(1)
    # Paste a second image into the message box, as from the clipboard.
    page.evaluate(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], "pasted.png", { type: "image/png" }));
            const input = document.getElementById("chat-input");
            input.dispatchEvent(new ClipboardEvent("paste", {
                clipboardData: data, bubbles: true, cancelable: true }));
        }""",
        base64.b64encode(pasted).decode(),
    )
    page_expect(page.locator("#attachments img")).to_have_count(2)
    page.fill("#max-tokens", "3")
    page.fill("#chat-input", "What colours are these?")
    page.click("#send-button")

    # The transcript shows both images with the message, decoded by the browser.
    shown = page.locator("#conversation .bubble.user img.attached")
    page_expect(shown).to_have_count(2)
    page_expect(shown.first).to_have_attribute("alt", "Attached image 1: red.png")
    assert shown.first.evaluate("img => img.naturalWidth") == 8
    page_expect(page.locator("#attachments img")).to_have_count(0)
    # The agent has no projection: the real answer is MultimodalNotSupported.
    note = page.locator("#conversation .bubble.assistant .note.error")
    page_expect(note).to_contain_text("Error 400: MultimodalNotSupported")
    tab.screenshot("prompt-image")

    (request,) = [m for m in sent if "Request" in m]
    history = request["Request"]["request"]["ContinueFromConversationHistory"][
        "conversation_history"
    ]
    assert history[-1]["content"] == [
        {"type": "text", "text": "What colours are these?"},
        {
            "type": "image_url",
            "image_url": {
                "url": "data:image/png;base64,"
                + base64.b64encode(picked.read_bytes()).decode()
            },
        },
        {
            "type": "image_url",
            "image_url": {
                "url": "data:image/png;base64," + base64.b64encode(pasted).decode()
            },
        },
    ]

    # The unanswered message with images leaves the conversation: the next
    # message goes without them, and the agent answers it.
    page_expect(page.locator("#conversation .bubble.user.dropped")).to_have_count(1)
    page.fill("#chat-input", "Hello")
    page.click("#send-button")
    page_expect(page.locator("#run-status")).to_contain_text("Done")
    last = [m for m in sent if "Request" in m][-1]
    follow_up = last["Request"]["request"]["ContinueFromConversationHistory"]
    assert follow_up["conversation_history"] == [{"role": "user", "content": "Hello"}]


def test_playground_refuses_a_file_that_is_no_image(tab: Tab, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    tab.goto("/prompt/")
    tab.page.set_input_files("#image-input", str(text))
    page_expect(tab.page.locator("#image-error")).to_contain_text(
        "notes.txt is not a PNG, JPEG, WebP, GIF or BMP image."
    )
    page_expect(tab.page.locator("#attachments img")).to_have_count(0)


def register_vision_agent(fleet: Fleet, agent_id: str) -> None:
    """An agent's report as one serving images would send it (no process
    behind it: it has no slots, so nothing is routed to it)."""
    report = {
        "id": agent_id,
        "name": agent_id,
        "channel": f"nowhere.{agent_id}",
        "slots_total": 0,
        "slots_processing": 0,
        "desired_slots_total": 0,
        "model_path": "/models/vision.gguf",
        "issues": [],
        "state_application_status": "Applied",
        "uses_chat_template_override": False,
        "slots": [],
        "serves_images": True,
    }
    client = fleet.client()
    try:
        client.set(keys.agent_status(agent_id), json.dumps(report), ex=60)
        client.sadd(keys.agents_set(), agent_id)
    finally:
        client.close()


def test_dashboard_says_which_agents_serve_images(tab: Tab, fleet: Fleet) -> None:
    register_vision_agent(fleet, "vision-agent")
    try:
        tab.goto("/")
        cards = tab.page.locator("#agents .agent")
        vision = cards.filter(has_text="vision-agent")
        page_expect(vision.locator(".images-value")).to_have_text(
            "served (projection loaded)"
        )
        text_only = cards.filter(has_text=AGENT)
        page_expect(text_only.locator(".images-value")).to_have_text("not served")
        assert text_only.get_attribute("data-serves-images") == "no"
        tab.screenshot("dashboard-images")
    finally:
        client = fleet.client()
        client.delete(keys.agent_status("vision-agent"))
        client.srem(keys.agents_set(), "vision-agent")
        client.close()
        time.sleep(0.2)


def test_model_page_projection_source_works_like_the_models(tab: Tab) -> None:
    tab.goto("/model/")
    page = tab.page
    page.click("summary:has-text('Multimodal projection')")
    page.check("input[name=mmproj_source][value=Url]")
    # The fields of the chosen kind show, the others hide, as for the model.
    page_expect(page.locator("#id_mmproj_url")).to_be_visible()
    page_expect(page.locator("#id_mmproj_local_path")).to_be_hidden()
    page.check("input[name=mmproj_source][value=HuggingFace]")
    page_expect(page.locator("#id_mmproj_hf_repo_id")).to_be_visible()
    page_expect(page.locator("#id_mmproj_url")).to_be_hidden()
    # And the same checks: nothing is saved, the error is at the field.
    page.check("input[name=mmproj_source][value=Url]")
    page.fill("#id_mmproj_url", "ftp://example.com/mmproj.gguf")
    page.click("button:has-text('Save and apply')")
    page_expect(page.locator("#id_mmproj_url_errors")).to_contain_text(
        "Must be an http(s) URL."
    )
