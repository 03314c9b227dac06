"""The admin panel in a real browser.

Debian's Chromium, driven by Playwright, against a real daphne, Redis and an
agent serving the demo model.  Every test fails on a browser console error.
Screenshots of every page, on a laptop and on a phone, go to var/screenshots/.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright
from playwright.sync_api import expect as page_expect

from balancer import keys
from tests.support.constants import AUTH, ROOT
from tests.support.fleet import Fleet
from tests.support.model_server import ModelServer
from tests.support.processes import wait_until
from tests.support.staff import grant_script
from tests.support.web import WebServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = ROOT / "var" / "screenshots"
VIEWPORTS = {
    "laptop": {"width": 1366, "height": 800},
    "phone": {"width": 390, "height": 844},
}
OPERATOR = ("operator", "operator-password-1")
VIEWER = ("viewer", "viewer-password-1")
AGENT = "panel-agent"
# The inference APIs of the panel's web server need this key: the playground
# must get in with the operator's login instead.
INFERENCE_KEY = "panel-test-inference-key"
INFERENCE_AUTH = {"Authorization": f"Bearer {INFERENCE_KEY}"}
# Loading the model on a busy 2-core machine takes a while.
AGENT_READY_S = 120


def manage(web: WebServer, code: str) -> None:
    """Run Python in ``manage.py shell`` against the web server's database."""
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=web.env,
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def panel_fleet(
    tmp_path_factory: pytest.TempPathFactory, greedy_state: dict[str, Any]
) -> Iterator[Fleet]:
    """Redis and a web server of its own (the tests change the desired state);
    the agent starts in the first test that needs it."""
    fleet = Fleet(tmp_path_factory.mktemp("panel"), greedy_state)
    try:
        web = fleet.web(PADDLER_INFERENCE_API_KEYS=INFERENCE_KEY)
        manage(
            web,
            "from django.contrib.auth.models import User;"
            f"User.objects.create_user({OPERATOR[0]!r}, password={OPERATOR[1]!r},"
            " is_staff=True);"
            f"User.objects.create_user({VIEWER[0]!r}, password={VIEWER[1]!r});"
            + grant_script(OPERATOR[0]),
        )
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture(scope="module")
def web(panel_fleet: Fleet) -> WebServer:
    return panel_fleet.webs[0]


def ensure_agent(fleet: Fleet) -> None:
    if not fleet.agents:
        fleet.agent(AGENT, 2)
    try:
        fleet.webs[0].wait_for_ready_agents(1, timeout=AGENT_READY_S)
    except TimeoutError:
        raise RuntimeError(fleet.agents[0].log.read_text()[-3000:]) from None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), (
        "Chromium is missing: scripts/setup.sh installs it (apt-get install chromium)"
    )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@dataclass
class Tab:
    """A browser page, with every console error and uncaught exception it saw."""

    page: Page
    web: WebServer
    errors: list[str] = field(default_factory=list)

    def watch(self) -> None:
        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                self.errors.append(f"console: {message.text} ({message.location})")

        self.page.on("console", on_console)
        self.page.on("pageerror", lambda error: self.errors.append(f"page: {error}"))

    def goto(self, path: str) -> None:
        self.page.goto(f"{self.web.url}{path}")

    def log_in(self, username: str, password: str) -> None:
        self.page.fill("#id_username", username)
        self.page.fill("#id_password", password)
        self.page.click("button[type=submit]")

    def screenshot(self, name: str, viewport: str = "laptop") -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(
            path=str(SCREENSHOTS / f"{name}-{viewport}.png"), full_page=True
        )


def open_tab(browser: Browser, web: WebServer, viewport: str = "laptop") -> Tab:
    context = browser.new_context(
        viewport=VIEWPORTS[viewport],  # type: ignore[arg-type]
        is_mobile=viewport == "phone",
        has_touch=viewport == "phone",
    )
    context.set_default_timeout(30_000)
    tab = Tab(context.new_page(), web)
    tab.watch()
    # Forms that ask before changing something are answered yes.
    tab.page.on("dialog", lambda dialog: dialog.accept())
    return tab


@pytest.fixture
def tab(browser: Browser, web: WebServer) -> Iterator[Tab]:
    """A logged-in operator on the dashboard."""
    opened = open_tab(browser, web)
    opened.goto("/")
    opened.log_in(*OPERATOR)
    opened.page.wait_for_url(f"{web.url}/")
    yield opened
    opened.page.context.close()
    assert opened.errors == [], "the browser reported errors"


def applicable_state(fleet: Fleet) -> dict[str, Any]:
    client = fleet.client()
    try:
        state: dict[str, Any] = json.loads(client.get(keys.desired_state()) or "null")
    finally:
        client.close()
    return state


def newest_requests(fleet: Fleet) -> list[dict[str, Any]]:
    client = fleet.client()
    try:
        return [json.loads(raw) for raw in client.lrange(keys.request_log(), 0, -1)]
    finally:
        client.close()


def agent_snapshot(web: WebServer) -> dict[str, Any]:
    (agent,) = [a for a in web.agents() if a["name"] == AGENT]
    return agent


# ------------------------------------------------------------------ tests


def test_only_staff_get_past_the_login_page(browser: Browser, web: WebServer) -> None:
    tab = open_tab(browser, web)
    tab.goto("/requests/")
    tab.page.wait_for_url(f"{web.url}/login/?next=/requests/")
    tab.screenshot("login")
    tab.log_in(OPERATOR[0], "not-the-password")
    page_expect(tab.page.locator(".form-errors")).to_contain_text(
        "enter a correct username and password"
    )
    tab.log_in(*VIEWER)
    page_expect(tab.page.locator(".form-errors")).to_contain_text("not a staff account")
    tab.log_in(*OPERATOR)
    tab.page.wait_for_url(f"{web.url}/requests/")
    # The management stream refuses anyone without a staff session.
    anonymous = httpx.get(f"{web.url}/dashboard/stream", timeout=10)
    assert anonymous.status_code == 401
    tab.page.context.close()
    # Chromium reports the refused logins' 200 pages as nothing: no errors.
    assert tab.errors == []


def test_dashboard_shows_a_real_agent_appear(tab: Tab, panel_fleet: Fleet) -> None:
    page = tab.page
    page_expect(page.locator("#live")).to_have_text("Live")
    page_expect(page.locator("#no-agents")).to_be_visible()
    page_expect(page.locator("#agents-count")).to_have_text("0")
    ensure_agent(panel_fleet)
    card = page.locator(".agent", has_text=AGENT)
    page_expect(card).to_be_visible()
    page_expect(card.locator(".badge")).to_have_text("Applied")
    page_expect(card.locator(".agent-model")).to_have_text("gemma3-270m-q4_k_m.gguf")
    page_expect(card.locator(".slots-value")).to_have_text("0 / 2")
    page_expect(card.locator(".agent-status")).to_have_text("Serving the desired state")
    # Its host-memory KV tier: the default budget of 2048 MiB.
    page_expect(card.locator(".host-tier-value")).to_have_text(
        re.compile(r"^\d+ entr(y|ies) · [\d.,]+ MB of 2[,.]?147\.5 MB$")
    )
    page_expect(card.locator(".host-tier-hits")).to_have_text(
        re.compile(r"^(no lookups yet|hit rate \d+% \(\d+ of \d+ lookups\))$")
    )
    page_expect(page.locator("#no-agents")).to_be_hidden()
    page_expect(page.locator("#agents-count")).to_have_text("1")
    page_expect(page.locator("#buffer-value")).to_have_text("0 / 30")


def generate_in_background(web: WebServer, max_tokens: int) -> threading.Event:
    """Start a generation over HTTP; the event is set at its first token."""
    started = threading.Event()

    def run() -> None:
        body = {"raw_prompt": "A long story:", "max_tokens": max_tokens}
        with httpx.stream(
            "POST",
            f"{web.url}/api/v1/continue_from_raw_prompt",
            json=body,
            headers=INFERENCE_AUTH,
            timeout=120,
        ) as response:
            for _ in response.iter_lines():
                started.set()

    threading.Thread(target=run, daemon=True).start()
    return started


def test_a_changed_parameter_is_validated_then_applied_on_the_agent(
    tab: Tab, panel_fleet: Fleet, web: WebServer
) -> None:
    ensure_agent(panel_fleet)
    page = tab.page
    tab.goto("/model/")
    top_k = page.locator("#id_top_k")
    page_expect(top_k).to_have_value("80")
    page_expect(page.locator("#own-template")).to_have_count(0)
    page_expect(page.locator("[data-template=model] .notice")).to_contain_text(
        "has no chat template"
    )
    # The preview renders the override against the sample conversation.
    preview = page.locator("#preview-output")
    page_expect(preview).to_contain_text("<start_of_turn>user\nHello! Who are you?")

    # A template that does not compile: the preview says so before saving.
    template = page.locator("#id_chat_template_override")
    original_template = template.input_value()
    template.fill("{% for message in messages %}{{ message.content }")
    page_expect(page.locator("#preview-error")).to_contain_text("does not compile")
    template.fill(original_template)
    page_expect(page.locator("#preview-error")).to_be_hidden()

    # An invalid value is refused, with the message next to its field.
    page.fill("#id_top_p", "1.5")
    page.fill("#id_context_size", "")
    page.click("button:has-text('Save and apply')")
    page_expect(page.locator("[data-field=top_p] .errors")).to_have_text(
        "Must be between 0 and 1."
    )
    page_expect(page.locator("[data-field=context_size] .errors")).to_have_text(
        "This field is required."
    )
    page_expect(page.locator(".form-errors")).to_contain_text("Nothing was saved")
    tab.screenshot("model-errors")
    assert applicable_state(panel_fleet)["inference_parameters"]["top_p"] == 0.8

    # A valid change, saved while the agent is busy: it finishes the request,
    # then reloads, and the dashboard shows it doing so.
    page.fill("#id_top_p", "0.8")
    page.fill("#id_context_size", "2048")
    top_k.fill("41")
    generating = generate_in_background(web, max_tokens=48)
    assert generating.wait(60), "the background generation did not start"
    page.click("button:has-text('Save and apply')")
    page.wait_for_url(f"{web.url}/")
    page_expect(page.locator(".message")).to_contain_text("Saved as revision")
    card = page.locator(".agent", has_text=AGENT)
    page_expect(card.locator(".badge")).to_have_text("Reloading")
    page_expect(card.locator(".agent-status")).to_contain_text("Applying")
    page_expect(card.locator(".badge")).to_have_text(
        "Applied", timeout=AGENT_READY_S * 1000
    )
    assert applicable_state(panel_fleet)["inference_parameters"]["top_k"] == 41
    # The agent loaded its model again, with the new parameters.
    log = panel_fleet.agents[0].log
    wait_until(
        lambda: log.read_text().count(f"agent {AGENT} serves") == 2,
        30,
        "the agent to reload",
    )
    tab.goto("/model/")
    page_expect(page.locator("#id_top_k")).to_have_value("41")


def test_playground_streams_tokens_and_stop_frees_the_slot(
    tab: Tab, panel_fleet: Fleet, web: WebServer
) -> None:
    ensure_agent(panel_fleet)
    page = tab.page
    tab.goto("/prompt/")
    # Nothing to send: the message is refused next to the field.
    page.click("#send-button")
    page_expect(page.locator("#chat-input-error")).to_have_text(
        "Write a message first."
    )

    page.fill("#max-tokens", "12")
    page.fill("#chat-input", "What is the capital of France?")
    page.click("#send-button")
    answer = page.locator(".bubble.assistant .text").last
    page_expect(answer).not_to_be_empty(timeout=60_000)
    page_expect(page.locator("#fact-agent")).to_have_text(AGENT)
    page_expect(page.locator("#run-status")).to_contain_text("Done", timeout=60_000)
    assert int(page.locator("#fact-tokens").inner_text()) > 0
    page_expect(page.locator("#fact-prompt")).to_contain_text("cached")
    tab.screenshot("prompt-chat")

    # A long answer, stopped after a few tokens: the slot is free long before
    # the answer could have ended.
    page.fill("#max-tokens", "2000")
    page.fill("#chat-input", "Write a very long story about a lighthouse keeper.")
    page.click("#send-button")
    wait_until(
        lambda: (
            int(page.locator("#fact-tokens").inner_text().replace(",", "") or 0) >= 3
        ),
        60,
        "tokens of the long answer",
    )
    page.click("#stop-button")
    stopped = time.monotonic()
    page_expect(page.locator(".bubble.assistant .note").last).to_contain_text(
        "Stopped after"
    )
    page_expect(page.locator("#send-button")).to_be_enabled()
    try:
        wait_until(
            lambda: newest_requests(panel_fleet)[0]["outcome"] == "cancelled",
            30,
            "the request log to record the cancellation",
        )
    except TimeoutError:
        raise AssertionError(newest_requests(panel_fleet)[:3]) from None
    wait_until(
        lambda: agent_snapshot(web)["slots_processing"] == 0,
        30,
        "the agent to free the slot",
    )
    # Far sooner than 2000 tokens take here (minutes).
    assert time.monotonic() - stopped < 30
    assert newest_requests(panel_fleet)[0]["agent"] == AGENT


def test_requests_page_says_where_each_request_went_and_how_it_ended(
    tab: Tab, panel_fleet: Fleet
) -> None:
    ensure_agent(panel_fleet)
    records = newest_requests(panel_fleet)
    assert {"done", "cancelled"} <= {r["outcome"] for r in records}
    page = tab.page
    tab.goto("/requests/")
    rows = page.locator("table.requests tbody tr")
    page_expect(rows.first).to_be_visible()
    assert rows.count() == len(records)
    done = next(i for i, r in enumerate(records) if r["outcome"] == "done")
    for index in (0, done):
        record, row = records[index], rows.nth(index)
        cells = {
            "Outcome": record["outcome"],
            "Agent": record["agent"],
            "Why there": record["why"],
            "Slot": "\N{EN DASH}" if record["slot"] is None else str(record["slot"]),
            "Cached / prompt": (
                f"{record['cached_prompt_tokens']} / {record['prompt_tokens']}"
            ),
            "Tokens": str(record["generated_tokens"]),
        }
        for label, text in cells.items():
            page_expect(row.locator(f"td[data-label='{label}']")).to_have_text(text)
    assert records[done]["slot"] is not None
    page_expect(page.locator(".badge.ok", has_text="done").first).to_be_visible()
    page.click(".filters a:has-text('Cancelled')")
    page_expect(
        page.locator("table.requests tbody tr .badge.muted").first
    ).to_have_text("cancelled")
    for badge in page.locator("td[data-label=Outcome] .badge").all():
        page_expect(badge).to_have_text("cancelled")


def test_roll_back_restores_an_earlier_revision(
    tab: Tab, panel_fleet: Fleet, web: WebServer
) -> None:
    ensure_agent(panel_fleet)
    page = tab.page
    tab.goto("/model/")
    history = page.locator("#history-heading ~ .table-wrap tbody tr")
    page_expect(history.first).to_contain_text("current")
    assert history.count() >= 2
    # The oldest revision is the state the fleet started with.
    history.last.locator("button:has-text('Roll back')").click()
    page.wait_for_url(f"{web.url}/")
    page_expect(page.locator(".message")).to_contain_text("Rolled back to revision")
    card = page.locator(".agent", has_text=AGENT)
    page_expect(card.locator(".badge")).to_have_text(
        "Applied", timeout=AGENT_READY_S * 1000
    )
    wait_until(
        lambda: applicable_state(panel_fleet)["inference_parameters"]["top_k"] == 80,
        10,
        "the rolled back state",
    )
    response = httpx.get(
        f"{web.url}/api/v1/balancer_desired_state", headers=AUTH, timeout=10
    )
    assert response.json()["inference_parameters"]["top_k"] == 80


def inference_status(web: WebServer, headers: dict[str, str]) -> int:
    response = httpx.post(
        f"{web.url}/api/v1/continue_from_raw_prompt",
        json={"raw_prompt": "Hi", "max_tokens": 1},
        headers=headers,
        timeout=60,
    )
    return response.status_code


def test_api_keys_are_shown_once_work_and_are_revoked(
    tab: Tab, panel_fleet: Fleet, web: WebServer
) -> None:
    ensure_agent(panel_fleet)
    page = tab.page
    tab.goto("/api-keys/")
    page_expect(page.locator(".access-note")).to_contain_text(
        "1 from PADDLER_INFERENCE_API_KEYS"
    )
    page.click("button:has-text('Create key')")
    page_expect(page.locator("[data-field=name] .errors")).to_have_text(
        "Give the key a name."
    )
    page.fill("#id_name", "nightly batch")
    page.click("button:has-text('Create key')")
    key = page.locator("#new-key").inner_text()
    assert key.startswith("pdl_")
    tab.screenshot("api-keys-created")
    row = page.locator("table.keys tbody tr", has_text="nightly batch")
    page_expect(row.locator(".badge")).to_have_text("active")
    page_expect(row.locator("td[data-label=Key]")).to_have_text(f"{key[:17]}…")
    bearer = {"Authorization": f"Bearer {key}"}
    assert inference_status(web, bearer) == 200
    assert inference_status(web, {}) == 401
    # Shown once: the next visit lists the key without it.
    tab.goto("/api-keys/")
    page_expect(page.locator("#new-key")).to_have_count(0)
    assert key not in page.content()
    row.locator("button:has-text('Revoke')").click()
    page_expect(page.locator(".message")).to_contain_text("Revoked")
    page_expect(row.locator(".badge")).to_have_text("revoked")
    assert inference_status(web, bearer) == 401


def test_the_socket_takes_a_staff_session_only_from_the_panel_s_own_pages(
    tab: Tab, web: WebServer
) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect
    from websockets.typing import Origin

    cookies = "; ".join(f"{c['name']}={c['value']}" for c in tab.page.context.cookies())
    url = web.url.replace("http://", "ws://", 1) + "/api/v1/inference_socket"
    with connect(url, origin=Origin(web.url), additional_headers={"Cookie": cookies}):
        pass
    for origin, headers in [
        ("http://elsewhere.example", {"Cookie": cookies}),
        (web.url, {}),
    ]:
        with (
            pytest.raises(InvalidStatus),
            connect(url, origin=Origin(origin), additional_headers=headers),
        ):
            pass


@pytest.mark.parametrize("viewport", ["laptop", "phone"])
def test_every_page_fits_the_screen(
    browser: Browser, web: WebServer, panel_fleet: Fleet, viewport: str
) -> None:
    ensure_agent(panel_fleet)
    tab = open_tab(browser, web, viewport)
    tab.goto("/")
    if viewport == "phone":
        tab.screenshot("login", viewport)
    tab.log_in(*OPERATOR)
    tab.page.wait_for_url(f"{web.url}/")
    pages = {
        "dashboard": "/",
        "model": "/model/",
        "prompt": "/prompt/",
        "requests": "/requests/",
        "api-keys": "/api-keys/",
    }
    for name, path in pages.items():
        tab.goto(path)
        if name == "dashboard":
            # The event stream keeps the network busy: wait for its data.
            page_expect(tab.page.locator(".agent", has_text=AGENT)).to_be_visible()
        else:
            tab.page.wait_for_load_state("networkidle")
        # Nothing sticks out sideways: no horizontal scrolling of the page (a
        # phone widens its layout viewport to fit content that sticks out).
        width = tab.page.evaluate("document.documentElement.scrollWidth")
        allowed = VIEWPORTS[viewport]["width"]
        assert width <= allowed, f"{name} is {width}px wide on a {allowed}px {viewport}"
        tab.screenshot(name, viewport)
    tab.page.context.close()
    assert tab.errors == [], "the browser reported errors"


def test_dashboard_shows_the_download_of_a_model_chosen_by_url(
    browser: Browser, fleet: Fleet, model_path: Path, tmp_path: Path
) -> None:
    web = fleet.web()
    manage(
        web,
        "from django.contrib.auth.models import User;"
        f"User.objects.create_user({OPERATOR[0]!r}, password={OPERATOR[1]!r},"
        " is_staff=True);" + grant_script(OPERATOR[0]),
    )
    # The model server starts later, on a port not known yet: trust loopback.
    fleet.agent(
        "downloader",
        2,
        env={
            "PADDLER_CACHE_DIR": str(tmp_path / "cache"),
            "PADDLER_MODEL_SOURCE_ALLOWED_HOSTS": "127.0.0.1",
        },
    )
    web.wait_for_ready_agents(1, timeout=AGENT_READY_S)
    tab = open_tab(browser, web)
    tab.goto("/model/")
    tab.log_in(*OPERATOR)
    page = tab.page
    page.wait_for_url(f"{web.url}/model/")
    with ModelServer(model_path) as server:
        server.throttle = 50_000_000  # bytes/s: about 5 s for the model
        url = f"{server.url}/files/{server.filename}"
        page.check("input[name=model_source][value=Url]")
        page_expect(page.locator("#id_model_local_path")).to_be_hidden()
        page.fill("#id_model_url", url)
        page.click("button:has-text('Save and apply')")
        page.wait_for_url(f"{web.url}/")
        card = page.locator(".agent", has_text="downloader")
        download = card.locator(".download")
        page_expect(download).to_be_visible(timeout=30_000)
        size_mb = model_path.stat().st_size / 1e6
        page_expect(download.locator(".download-value")).to_have_text(
            re.compile(rf"\d+% · [\d.]+ of {size_mb:.1f} MB")
        )
        page_expect(download.locator(".download-file")).to_contain_text(server.filename)
        tab.screenshot("dashboard-download")
        page_expect(card.locator(".badge")).to_have_text(
            "Applied", timeout=AGENT_READY_S * 1000
        )
        page_expect(download).to_be_hidden()
        page_expect(card.locator(".agent-model")).to_contain_text(server.filename)
    tab.page.context.close()
    assert tab.errors == [], "the browser reported errors"


def test_the_pool_switcher_shows_each_pools_pages(
    tab: Tab, web: WebServer, panel_fleet: Fleet
) -> None:
    ensure_agent(panel_fleet)
    manage(
        web,
        "from balancer.services import pool_create, pool_names;"
        "'brief' in pool_names() or pool_create(name='brief')",
    )
    page = tab.page
    tab.goto("/")
    page_expect(page.locator(".agent", has_text=AGENT)).to_be_visible()
    page.select_option("#pool-switcher", "brief")
    page.wait_for_url(f"{web.url}/?pool=brief")
    page_expect(page.locator("h1")).to_contain_text("pool brief")
    # The brief pool has no agent yet: the dashboard says how to start one.
    page_expect(page.locator("#no-agents")).to_contain_text("--pool brief")
    page_expect(page.locator(".agent", has_text=AGENT)).to_have_count(0)
    tab.screenshot("pool-brief-dashboard")
    # The choice holds on the other pages.
    tab.goto("/model/")
    page_expect(page.locator("h1")).to_contain_text("pool brief")
    page_expect(page.locator("#pool-switcher")).to_have_value("brief")
    page.select_option("#pool-switcher", "default")
    page.wait_for_url(f"{web.url}/model/?pool=default")
    page_expect(page.locator("h1")).to_contain_text("pool default")
