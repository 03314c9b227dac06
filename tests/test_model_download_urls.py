"""Model downloads (``agents.model_download``) over ``balancer.safe_http``'s
checked redirect walk, against real HTTP servers on loopback: a credential
goes to the first URL's origin only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from agents.model_download import DownloadFailed, DownloadRules, download_file
from balancer.safe_http import open_checked
from tests.support.model_server import ModelServer, Progress

SECRET = "Bearer hf_secret"


@pytest.fixture
def hub(model_path: Path) -> Iterator[ModelServer]:
    with ModelServer(model_path) as running:
        yield running


@pytest.fixture
def cdn(model_path: Path) -> Iterator[ModelServer]:
    with ModelServer(model_path) as running:
        yield running


def port_of(server: ModelServer) -> int:
    return int(server.url.rpartition(":")[2])


def redirect(server: ModelServer, to: str) -> str:
    return f"{server.url}/redirect?to={quote(to, safe='')}"


def rules_for(*servers: ModelServer) -> DownloadRules:
    return DownloadRules(
        allowed_hosts=tuple(("127.0.0.1", port_of(s)) for s in servers)
    )


def headers_of(server: ModelServer) -> list[dict[str, str]]:
    return [headers for _, headers in server.requests]


async def test_a_download_redirected_to_another_origin_drops_the_authorization(
    hub: ModelServer, cdn: ModelServer, model_path: Path, tmp_path: Path
) -> None:
    # As the Hub does: its answer sends the file from a CDN on another origin
    # (here another port), which must not see the user's token.
    target = tmp_path / "model.gguf"
    await download_file(
        redirect(hub, f"{cdn.url}/files/{cdn.filename}"),
        target,
        rules=rules_for(hub, cdn),
        progress=Progress(),
        on_progress=lambda: None,
        headers={"Authorization": SECRET},
    )
    assert target.stat().st_size == model_path.stat().st_size
    (hub_headers,) = headers_of(hub)
    (cdn_headers,) = headers_of(cdn)
    assert hub_headers["Authorization"] == SECRET
    assert "Authorization" not in cdn_headers
    # The rest of the request still goes: ranges are of the bytes as sent.
    assert cdn_headers["Accept-Encoding"] == "identity"


async def test_a_redirect_within_the_origin_keeps_the_authorization(
    hub: ModelServer,
) -> None:
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport()) as client:
        response = await open_checked(
            client,
            redirect(hub, f"/files/{hub.filename}"),
            trusts=rules_for(hub).trusts,
            timeout_s=5.0,
            setting="PADDLER_MODEL_SOURCE_ALLOWED_HOSTS",
            headers={"Authorization": SECRET},
        )
        await response.aclose()
    assert response.status_code == 200
    assert [h["Authorization"] for h in headers_of(hub)] == [SECRET, SECRET]


async def test_once_dropped_the_authorization_does_not_come_back_to_its_origin(
    hub: ModelServer, cdn: ModelServer
) -> None:
    # hub -> cdn -> hub: the last hop is the first origin again, but the
    # token went through a host that chose where it goes next.
    back = redirect(cdn, f"{hub.url}/files/{hub.filename}")
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport()) as client:
        response = await open_checked(
            client,
            redirect(hub, back),
            trusts=rules_for(hub, cdn).trusts,
            timeout_s=5.0,
            setting="PADDLER_MODEL_SOURCE_ALLOWED_HOSTS",
            headers={"Authorization": SECRET},
        )
        await response.aclose()
    assert response.status_code == 200
    first, last = headers_of(hub)
    assert first["Authorization"] == SECRET
    assert "Authorization" not in last


async def test_a_redirect_to_a_host_not_allowed_fails_as_unreachable(
    hub: ModelServer, cdn: ModelServer, tmp_path: Path
) -> None:
    # safe_http's refusal reads as the downloads' own issue.
    with pytest.raises(DownloadFailed) as failed:
        await download_file(
            redirect(hub, f"{cdn.url}/files/{cdn.filename}"),
            tmp_path / "model.gguf",
            rules=rules_for(hub),
            progress=Progress(),
            on_progress=lambda: None,
        )
    assert failed.value.variant == "DownloadServerIsUnreachable"
    assert failed.value.message == (
        "the address cannot be reached or is not allowed (the agent's log says why)"
    )
    assert "PADDLER_MODEL_SOURCE_ALLOWED_HOSTS" in failed.value.detail
    assert cdn.requests == []
