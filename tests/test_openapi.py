"""The OpenAPI schema of the whole HTTP surface, and its docs page."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import yaml
from django.core.management import call_command
from django.urls import URLPattern, URLResolver

from paddler_project import urls
from tests.support.web import WebServer

# Not APIs: the admin, the panel (an include), and the schema and its page.
NOT_API = ("admin/", "", "api/schema/", "api/docs/")


def api_paths() -> list[str]:
    """Every management and inference URL, in OpenAPI's form."""
    paths = []
    for pattern in urls.urlpatterns:
        if isinstance(pattern, URLResolver):
            continue
        assert isinstance(pattern, URLPattern)
        route = str(pattern.pattern)
        if route in NOT_API:
            continue
        paths.append("/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route))
    # The inference socket is routed by the ASGI application, not Django.
    return [*paths, "/api/v1/inference_socket"]


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    # drf-spectacular's own validation against the OpenAPI 3 specification;
    # any warning of the generator (a view it could not read) fails too.
    target = tmp_path_factory.mktemp("schema") / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", target)
    loaded: dict[str, object] = yaml.safe_load(Path(target).read_text())
    return loaded


def test_the_schema_is_valid_openapi_3(schema: dict[str, object]) -> None:
    assert str(schema["openapi"]).startswith("3.")


def test_every_management_and_inference_url_is_in_the_schema(
    schema: dict[str, object],
) -> None:
    paths = schema["paths"]
    assert isinstance(paths, dict)
    expected = api_paths()
    assert len(expected) > 20
    assert [path for path in expected if path not in paths] == []


def test_streamed_responses_are_described_by_their_lines(
    schema: dict[str, object],
) -> None:
    paths = schema["paths"]
    assert isinstance(paths, dict)
    ndjson = paths["/api/v1/continue_from_raw_prompt"]["post"]["responses"]["200"]
    line = ndjson["content"]["application/json"]["schema"]
    assert line == {"$ref": "#/components/schemas/InferenceStreamLine"}
    chat = paths["/v1/chat/completions"]["post"]["responses"]["200"]
    assert "text/event-stream" in chat["content"]
    assert "ChatCompletionChunk" in chat["description"]
    sse = paths["/api/v1/agents/stream"]["get"]["responses"]["200"]
    stream = sse["content"]["text/event-stream"]
    assert stream["x-line-schema"] == {"$ref": "#/components/schemas/AgentsSnapshot"}
    components = schema["components"]
    assert isinstance(components, dict)
    assert "AgentsSnapshot" in components["schemas"]


def test_the_server_serves_the_schema_and_a_docs_page_without_a_cdn(
    quiet_web: WebServer,
) -> None:
    with httpx.Client(base_url=quiet_web.url, timeout=10) as client:
        served = client.get("/api/schema/", params={"format": "json"})
        assert served.status_code == 200
        assert "/api/v1/balancer_desired_state" in served.json()["paths"]
        page = client.get("/api/docs/")
        assert page.status_code == 200
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        scripts = [a for a in assets if a.endswith((".js", ".css"))]
        assert scripts, page.text
        for asset in assets:
            assert not asset.startswith(("http:", "https:", "//")), asset
        for asset in scripts:
            assert client.get(asset).status_code == 200, asset
