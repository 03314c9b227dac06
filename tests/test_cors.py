"""CORS: a real page on another origin, in Chromium, calls the APIs.

The allowed origin gets answers (the browser lets the page read them, after
a preflight where one is due); any other origin is refused by the browser.
Each surface has its own list.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured
from playwright.sync_api import Browser, Page, sync_playwright

from paddler_project.env import env_origins
from tests.support.constants import AUTH, MANAGEMENT_TOKEN
from tests.support.redis_server import RedisServer
from tests.support.web import WebServer, start_web

CHROMIUM = "/usr/bin/chromium"
PAGE = b"<!doctype html><title>another origin</title><p>A browser app.</p>"


class PageServer:
    """A web page of its own origin (its own port on 127.0.0.1)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(PAGE)))
                self.end_headers()
                self.wfile.write(PAGE)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def origins() -> Iterator[dict[str, PageServer]]:
    pages = {
        "inference app": PageServer(),
        "console": PageServer(),
        "other": PageServer(),
    }
    yield pages
    for page in pages.values():
        page.close()


@pytest.fixture(scope="module")
def cors_web(
    quiet_redis: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
    origins: dict[str, PageServer],
) -> Iterator[WebServer]:
    web = start_web(
        quiet_redis.url,
        tmp_path_factory.mktemp("cors"),
        PADDLER_CORS_ALLOWED_ORIGINS=origins["inference app"].origin,
        PADDLER_MANAGEMENT_CORS_ALLOWED_ORIGINS=origins["console"].origin,
        PADDLER_BUFFERED_REQUEST_TIMEOUT_MS="300",
    )
    yield web
    web.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "Chromium is missing (apt-get install chromium)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox"]
        )
        yield launched
        launched.close()


# fetch() from the page: what the page may read, or the browser's refusal.
FETCH = """async ([url, options]) => {
    try {
        const response = await fetch(url, options);
        return {status: response.status, body: await response.text()};
    } catch (error) {
        return {refused: String(error)};
    }
}"""


def page_at(browser: Browser, origin: PageServer) -> Page:
    page = browser.new_page()
    page.goto(origin.origin)
    return page


def call(page: Page, url: str, options: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(FETCH, [url, options])
    return result


def models(web: WebServer) -> tuple[str, dict[str, Any]]:
    # A bearer header makes the browser ask first (a preflight).
    options = {"headers": {"Authorization": "Bearer any-key"}}
    return f"{web.url}/v1/models", options


def raw_prompt(web: WebServer) -> tuple[str, dict[str, Any]]:
    options = {
        "method": "POST",
        "headers": {"Content-Type": "application/json"},
        "body": '{"raw_prompt": "Hi", "max_tokens": 2}',
    }
    return f"{web.url}/api/v1/continue_from_raw_prompt", options


def agents(web: WebServer) -> tuple[str, dict[str, Any]]:
    options = {"headers": {"Authorization": f"Bearer {MANAGEMENT_TOKEN}"}}
    return f"{web.url}/api/v1/agents", options


def test_the_allowed_origin_calls_the_inference_apis(
    browser: Browser, cors_web: WebServer, origins: dict[str, PageServer]
) -> None:
    page = page_at(browser, origins["inference app"])
    listed = call(page, *models(cors_web))
    assert listed.get("status") == 200, listed
    assert '"object": "list"' in listed["body"] or '"object":"list"' in listed["body"]
    # No agent serves this server: the request waits, then gets its 504,
    # which the page may read.
    waited = call(page, *raw_prompt(cors_web))
    assert waited.get("status") == 504, waited
    # This origin is not the management API's.
    assert "refused" in call(page, *agents(cors_web))
    page.close()


def test_the_allowed_origin_calls_the_management_api(
    browser: Browser, cors_web: WebServer, origins: dict[str, PageServer]
) -> None:
    page = page_at(browser, origins["console"])
    listed = call(page, *agents(cors_web))
    assert listed.get("status") == 200, listed
    assert '"agents"' in listed["body"]
    assert "refused" in call(page, *models(cors_web))
    page.close()


def test_other_origins_are_refused_by_the_browser(
    browser: Browser, cors_web: WebServer, origins: dict[str, PageServer]
) -> None:
    page = page_at(browser, origins["other"])
    for url, options in (models(cors_web), raw_prompt(cors_web), agents(cors_web)):
        result = call(page, url, options)
        assert "refused" in result, (url, result)
    page.close()


def test_without_configured_origins_no_origin_is_allowed(
    quiet_web: WebServer, origins: dict[str, PageServer]
) -> None:
    # The default: no CORS header, on either surface, even to a preflight.
    origin = origins["inference app"].origin
    for path in ("/v1/models", "/api/v1/agents"):
        answer = httpx.options(
            f"{quiet_web.url}{path}",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
                **AUTH,
            },
        )
        assert "access-control-allow-origin" not in answer.headers


@pytest.mark.parametrize(
    "value", ["app.example.com", "https://app.example.com/path", "ftp://x", "https://"]
)
def test_an_origin_that_is_no_origin_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("PADDLER_CORS_ALLOWED_ORIGINS", value)
    with pytest.raises(ImproperlyConfigured, match="PADDLER_CORS_ALLOWED_ORIGINS"):
        env_origins("PADDLER_CORS_ALLOWED_ORIGINS")


def test_origins_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "PADDLER_CORS_ALLOWED_ORIGINS", "https://a.example, http://b:8080"
    )
    assert env_origins("PADDLER_CORS_ALLOWED_ORIGINS") == [
        "https://a.example",
        "http://b:8080",
    ]
    monkeypatch.delenv("PADDLER_CORS_ALLOWED_ORIGINS")
    assert env_origins("PADDLER_CORS_ALLOWED_ORIGINS") == []
