"""The playground and the dashboard with an agent that serves images, in
Chromium: an attached image goes to the agent, which answers with its image
tokens counted, and the dashboard says the agent serves images.

The agent serves the demo model with the generated test projection
(``tests/support/mmproj.py``): its answers are nonsense, but the path is the
real one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser
from playwright.sync_api import expect as page_expect

from tests.support.fleet import Fleet
from tests.support.mmproj import model_width, write_test_mmproj
from tests.test_panel import Tab, browser
from tests.test_panel_images import add_operator, operator_tab, png

__all__ = ["browser"]  # the browser fixture, shared with test_panel

AGENT = "panel-vision-agent"


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory,
    greedy_state: dict[str, Any],
    model_path: Path,
) -> Iterator[Fleet]:
    tmp_path = tmp_path_factory.mktemp("panel-vision")
    projection = write_test_mmproj(
        tmp_path / "test-mmproj.gguf", text_width=model_width(model_path)
    )
    state = {**greedy_state, "multimodal_projection": {"LocalToAgent": str(projection)}}
    built = Fleet(tmp_path, state)
    try:
        web = built.web()
        add_operator(web)
        agent = built.agent(AGENT, 1, "--threads", "1")
        try:
            web.wait_for_ready_agents(1, timeout=180)
        except TimeoutError:
            raise RuntimeError(agent.log.read_text()[-3000:]) from None
        yield built
    finally:
        built.stop()


@pytest.fixture
def tab(browser: Browser, fleet: Fleet) -> Iterator[Tab]:
    yield from operator_tab(browser, fleet.webs[0])


def test_playground_image_is_answered_by_an_agent_that_serves_images(
    tab: Tab, tmp_path: Path
) -> None:
    picked = tmp_path / "red.png"
    picked.write_bytes(png(64, 64, (220, 20, 20)))
    tab.goto("/prompt/")
    page = tab.page
    page.set_input_files("#image-input", str(picked))
    page_expect(page.locator("#attachments img")).to_have_count(1)
    page.fill("#max-tokens", "4")
    page.fill("#chat-input", "What colour is this?")
    page.click("#send-button")

    page_expect(page.locator("#conversation .bubble.user img.attached")).to_have_count(
        1
    )
    page_expect(page.locator("#run-status")).to_contain_text("Done", timeout=120_000)
    answer = page.locator("#conversation .bubble.assistant").last
    page_expect(answer.locator(".note.error")).to_have_count(0)
    assert answer.inner_text().strip()
    # The facts count the image's tokens apart from the text's.
    page_expect(page.locator("#fact-prompt")).to_contain_text("+ 16 image")
    # The message with its image stays in the conversation (it was answered).
    page_expect(page.locator("#conversation .bubble.user.dropped")).to_have_count(0)
    tab.screenshot("prompt-image-answered")


def test_dashboard_says_the_agent_serves_images(tab: Tab) -> None:
    tab.goto("/")
    card = tab.page.locator("#agents .agent").filter(has_text=AGENT)
    page_expect(card.locator(".images-value")).to_have_text(
        "served (projection loaded)"
    )
    assert card.get_attribute("data-serves-images") == "yes"
