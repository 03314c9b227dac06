"""The inference endpoints take a short middleware stack; the panel the whole.

``paddler_project.handlers`` sends the inference paths to a Django handler
built with ``INFERENCE_MIDDLEWARE`` (all of it on the event loop), and every
other path to the one built with ``MIDDLEWARE``.  The headers tell which
stack a response went through: the clickjacking middleware is the panel's
only, the security middleware runs on both.
"""

from __future__ import annotations

import httpx
import pytest

from paddler_project.handlers import is_inference_path
from tests.support.web import WebServer


@pytest.mark.parametrize(
    ("path", "inference"),
    [
        ("/api/v1/continue_from_raw_prompt", True),
        ("/api/v1/continue_from_conversation_history", True),
        ("/api/v1/generate_embedding_batch", True),
        ("/v1/chat/completions", True),
        ("/v1/models", True),
        ("/health", True),
        ("/api/v1/agents", False),
        ("/api/v1/balancer_desired_state", False),
        ("/metrics", False),
        ("/login/", False),
        ("/admin/", False),
        ("/", False),
        ("/static/panel/panel.css", False),
    ],
)
def test_which_paths_are_inference_paths(path: str, inference: bool) -> None:
    assert is_inference_path(path) is inference


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/api/v1/continue_from_raw_prompt", 400),
        ("POST", "/v1/completions", 400),
        ("GET", "/v1/models", 200),
        ("GET", "/health", 200),
    ],
)
def test_inference_responses_skip_the_panels_middleware(
    web: WebServer, method: str, path: str, status: int
) -> None:
    response = httpx.request(method, f"{web.url}{path}", json={"raw_prompt": 5})
    assert response.status_code == status
    assert "X-Frame-Options" not in response.headers
    assert "Set-Cookie" not in response.headers
    # Django's security middleware still runs, on the event loop.
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"


def test_the_panel_keeps_the_whole_middleware_stack(web: WebServer) -> None:
    response = httpx.get(f"{web.url}/login/")
    assert response.status_code == 200
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "csrftoken" in response.cookies
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    management = httpx.get(f"{web.url}/api/v1/agents")
    assert management.status_code == 401
    assert management.headers["X-Frame-Options"] == "DENY"


def test_static_files_are_served_from_the_asynchronous_whitenoise(
    web: WebServer,
) -> None:
    css = httpx.get(f"{web.url}/static/panel/panel.css")
    assert css.status_code == 200
    assert css.headers["Content-Type"].startswith("text/css")
    assert css.content
    assert httpx.get(f"{web.url}/static/panel/missing.css").status_code == 404
