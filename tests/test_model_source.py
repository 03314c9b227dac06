"""URL and Hugging Face model sources against real local servers, as an attacker.

Each test drives ``resolve_model_path`` in this process against a real HTTP
server on loopback (``tests/support/model_server.py``), a real Redis, or a plain
socket, and checks the issue an agent would report and what reached the
servers and the cache.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from pytest_django.fixtures import Settings

from agents.model_source import ModelSourceError, resolve_model_path
from balancer.desired_state import ModelSource
from paddler_project.env import env_hosts
from tests.support.constants import ROOT
from tests.support.model_server import ModelServer, Progress, self_signed_tls
from tests.support.processes import free_port, stop_process
from tests.support.redis_server import start_redis

# The message every unreachable or refused address gets, whatever the cause.
UNREACHABLE = (
    "the address cannot be reached or is not allowed (the agent's log says why)"
)
SMALL_CAP = 1 << 20


@pytest.fixture
def cache(settings: Settings, tmp_path: Path) -> Path:
    settings.PADDLER_CACHE_DIR = str(tmp_path / "cache")
    settings.PADDLER_MODEL_SOURCE_ALLOWED_HOSTS = []
    return tmp_path / "cache"


@pytest.fixture
def server(model_path: Path) -> Iterator[ModelServer]:
    with ModelServer(model_path) as running:
        yield running


def allow(settings: Settings, *hosts: tuple[str, int | None]) -> None:
    settings.PADDLER_MODEL_SOURCE_ALLOWED_HOSTS = list(hosts)


def port_of(server: ModelServer) -> int:
    return int(server.url.rpartition(":")[2])


async def fetch(url: str) -> str:
    source = ModelSource.from_json({"Url": {"url": url}}, "model")
    return await resolve_model_path(source, Progress(), lambda: None)


async def issue_of(url: str) -> Any:
    with pytest.raises(ModelSourceError) as raised:
        await fetch(url)
    return raised.value.issue


# Failures Paddler has an issue for, by our message: the issue carries only
# the model's path, as Paddler's does.
PADDLER_ISSUES = {
    UNREACHABLE: "DownloadServerIsUnreachable",
    "only http and https URLs can be downloaded": "DownloadUrlIsMalformed",
}


def url_error(url: str, message: str) -> dict[str, Any]:
    if message in PADDLER_ISSUES:
        return {PADDLER_ISSUES[message]: {"model_path": url}}
    return {"ModelDownloadFailed": {"model_path": url, "error": message}}


def files_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def redirect(server: ModelServer, to: str) -> str:
    return f"{server.url}/redirect?to={quote(to, safe='')}"


async def test_loopback_url_is_refused_unless_the_operator_allows_its_host(
    settings: Settings, cache: Path, server: ModelServer, model_path: Path
) -> None:
    url = f"{server.url}/files/{server.filename}"
    assert await issue_of(url) == url_error(url, UNREACHABLE)
    assert server.requests == [], "a refused address was connected to"
    assert files_in(cache) == []

    allow(settings, ("127.0.0.1", port_of(server)))
    path = Path(await fetch(url))
    assert sha256(path) == sha256(model_path)


async def test_name_that_resolves_to_loopback_is_refused_though_the_address_is_allowed(
    settings: Settings, cache: Path, server: ModelServer
) -> None:
    # Hosts are trusted by the name in the URL: a name of the attacker's
    # pointing at a trusted address does not borrow its trust.
    allow(settings, ("127.0.0.1", port_of(server)))
    url = f"http://localhost:{port_of(server)}/files/{server.filename}"
    assert await issue_of(url) == url_error(url, UNREACHABLE)
    assert server.requests == []


async def test_redirect_into_redis_on_loopback_is_refused_before_connecting(
    settings: Settings, cache: Path, server: ModelServer
) -> None:
    redis_server = start_redis()
    client = redis.Redis(port=redis_server.port)
    try:
        allow(settings, ("127.0.0.1", port_of(server)))
        before = client.info("stats")["total_connections_received"]
        url = redirect(server, f"http://127.0.0.1:{redis_server.port}/")
        assert await issue_of(url) == url_error(url, UNREACHABLE)
        after = client.info("stats")["total_connections_received"]
        assert after == before, "the download spoke HTTP to Redis"
        assert files_in(cache) == []
    finally:
        client.close()
        stop_process(redis_server.process)


@pytest.mark.parametrize(
    "target",
    [
        "http://10.0.0.1/model.gguf",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]/model.gguf",
        "http://0.0.0.0/model.gguf",
        "http://[fd00::1]/model.gguf",
    ],
)
async def test_redirect_to_a_private_address_is_refused(
    settings: Settings, cache: Path, server: ModelServer, target: str
) -> None:
    allow(settings, ("127.0.0.1", port_of(server)))
    url = redirect(server, target)
    assert await issue_of(url) == url_error(url, UNREACHABLE)
    assert [path for path, _ in server.requests] == [url.removeprefix(server.url)]


async def test_redirects_within_allowed_hosts_are_followed_a_bounded_number_of_times(
    settings: Settings, cache: Path, server: ModelServer, model_path: Path
) -> None:
    allow(settings, ("127.0.0.1", port_of(server)))
    url = redirect(server, redirect(server, f"/files/{server.filename}"))
    assert sha256(Path(await fetch(url))) == sha256(model_path)

    server.requests.clear()
    looping = f"{server.url}/files/x.gguf"
    for _ in range(10):
        looping = redirect(server, looping)
    assert await issue_of(looping) == url_error(looping, "more than 5 redirects")
    assert len(server.requests) == 6


@pytest.mark.parametrize(
    "target",
    ["file:///etc/passwd", "ftp://127.0.0.1/model.gguf", "gopher://127.0.0.1:6379/_"],
)
async def test_redirect_to_a_scheme_other_than_http_is_refused_with_a_clear_issue(
    settings: Settings, cache: Path, server: ModelServer, target: str
) -> None:
    allow(settings, ("127.0.0.1", None))
    url = redirect(server, target)
    assert await issue_of(url) == url_error(
        url, "only http and https URLs can be downloaded"
    )


async def test_url_source_with_another_scheme_is_refused_by_the_agent_too(
    cache: Path,
) -> None:
    # The web tier refuses these in the desired state; an agent reads its
    # state from Redis, so it checks again.
    source = ModelSource(kind="Url", url="ftp://127.0.0.1/model.gguf")
    with pytest.raises(ModelSourceError) as raised:
        await resolve_model_path(source, Progress(), lambda: None)
    assert raised.value.issue == url_error(
        source.url, "only http and https URLs can be downloaded"
    )


async def test_body_over_the_cap_by_content_length_is_refused_before_reading(
    settings: Settings, cache: Path, server: ModelServer
) -> None:
    allow(settings, ("127.0.0.1", port_of(server)))
    settings.PADDLER_MODEL_MAX_BYTES = SMALL_CAP
    too_large = f"the file is larger than PADDLER_MODEL_MAX_BYTES ({SMALL_CAP})"
    for path in (f"/files/{server.filename}", "/claims"):
        url = f"{server.url}{path}"
        assert await issue_of(url) == url_error(url, too_large)
    assert files_in(cache) == []


async def test_body_without_a_length_is_cut_off_at_the_cap(
    settings: Settings, cache: Path, server: ModelServer
) -> None:
    allow(settings, ("127.0.0.1", port_of(server)))
    settings.PADDLER_MODEL_MAX_BYTES = SMALL_CAP
    url = f"{server.url}/endless"
    too_large = f"the file is larger than PADDLER_MODEL_MAX_BYTES ({SMALL_CAP})"
    assert await issue_of(url) == url_error(url, too_large)
    assert files_in(cache) == []


def closed_port() -> int:
    return free_port()  # bound, then closed: nothing listens there


async def test_closed_port_open_non_http_port_and_refused_address_look_the_same(
    settings: Settings, cache: Path
) -> None:
    # Even with every loopback port trusted, the issue must not tell a port
    # scanner which ports are open: Redis answers, a closed port refuses.
    allow(settings, ("127.0.0.1", None))
    redis_server = start_redis()
    try:
        urls = [
            f"http://127.0.0.1:{closed_port()}/model.gguf",
            f"http://127.0.0.1:{redis_server.port}/model.gguf",
            "http://10.0.0.1/model.gguf",
            "http://name.invalid/model.gguf",
        ]
        issues = [await issue_of(url) for url in urls]
    finally:
        stop_process(redis_server.process)
    assert issues == [url_error(url, UNREACHABLE) for url in urls]
    assert files_in(cache) == []


async def test_port_that_never_answers_looks_like_a_closed_one(
    settings: Settings, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agents.model_download.TIMEOUT_S", 0.5)
    allow(settings, ("127.0.0.1", None))
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/model.gguf"
        assert await issue_of(url) == url_error(url, UNREACHABLE)


async def test_failed_download_leaves_nothing_and_a_retry_starts_clean(
    settings: Settings, cache: Path, server: ModelServer, model_path: Path
) -> None:
    allow(settings, ("127.0.0.1", port_of(server)))
    url = f"{server.url}/truncated/{server.filename}"
    assert await issue_of(url) == url_error(url, UNREACHABLE)
    assert files_in(cache) == []

    server.repaired = True
    assert sha256(Path(await fetch(url))) == sha256(model_path)
    assert server.ranges == [], "the retry resumed a failed download"


async def test_answer_that_is_not_a_gguf_model_is_not_kept(
    settings: Settings, cache: Path, server: ModelServer
) -> None:
    allow(settings, ("127.0.0.1", port_of(server)))
    for path in ("/page", "/redirect?to=/page"):
        url = f"{server.url}{path}"
        assert await issue_of(url) == url_error(url, "the file is not a GGUF model")
    assert files_in(cache) == []


@pytest.fixture
def hf_home(
    cache: Path, server: ModelServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The Hub is ``server``; returns HF_HOME."""
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    return tmp_path / "hf-home"


def hub_source(server: ModelServer) -> ModelSource:
    return ModelSource.from_json(
        {
            "HuggingFace": {
                "repo_id": server.repo_id,
                "filename": server.filename,
                "revision": "main",
            }
        },
        "model",
    )


async def test_hugging_face_endpoint_on_loopback_needs_the_allow_list(
    server: ModelServer, hf_home: Path
) -> None:
    source = hub_source(server)
    with pytest.raises(ModelSourceError) as raised:
        await resolve_model_path(source, Progress(), lambda: None)
    model_path = f"{server.repo_id}/main/{server.filename}"
    assert raised.value.issue == {
        "DownloadServerIsUnreachable": {"model_path": model_path}
    }
    assert server.requests == []
    assert files_in(hf_home) == []


async def test_hugging_face_token_does_not_follow_a_redirect_to_another_host(
    settings: Settings,
    server: ModelServer,
    model_path: Path,
    hf_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with ModelServer(model_path) as cdn:
        allow(settings, ("127.0.0.1", port_of(server)), ("127.0.0.1", port_of(cdn)))
        server.hub_redirect = f"{cdn.url}/files/{cdn.filename}"
        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        source = hub_source(server)
        path = Path(await resolve_model_path(source, Progress(), lambda: None))
        assert path.is_relative_to(hf_home)
        assert sha256(path) == sha256(model_path)
        ((_, hub_headers),) = server.requests
        ((_, cdn_headers),) = cdn.requests
        assert hub_headers["Authorization"] == "Bearer hf_secret"
        assert "Authorization" not in cdn_headers


def test_allowed_hosts_setting_reads_names_addresses_and_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "PADDLER_MODEL_SOURCE_ALLOWED_HOSTS",
        "Models.Internal, 127.0.0.1:8081,[::1]:9000,fd00::5,[fd00::6]",
    )
    assert env_hosts("PADDLER_MODEL_SOURCE_ALLOWED_HOSTS") == [
        ("models.internal", None),
        ("127.0.0.1", 8081),
        ("::1", 9000),
        ("fd00::5", None),
        ("fd00::6", None),
    ]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PADDLER_MODEL_SOURCE_ALLOWED_HOSTS", "models.internal:http"),
        ("PADDLER_MODEL_SOURCE_ALLOWED_HOSTS", "127.0.0.1:0"),
        ("PADDLER_MODEL_SOURCE_ALLOWED_HOSTS", "host:1:2"),
        ("PADDLER_MODEL_SOURCE_ALLOWED_HOSTS", "[::1:80"),
        ("PADDLER_MODEL_SOURCE_ALLOWED_HOSTS", ":8080"),
        ("PADDLER_MODEL_MAX_BYTES", "0"),
        ("PADDLER_MODEL_MAX_BYTES", "1G"),
    ],
)
def test_bad_model_source_setting_stops_the_start_naming_it(
    variable: str, value: str
) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        check=False,
        cwd=ROOT,
        env={**os.environ, variable: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert variable in result.stderr


async def test_https_connects_to_the_checked_address_and_verifies_the_name(
    settings: Settings,
    cache: Path,
    model_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The connection goes to the resolved address, not the name, so the
    # certificate must still be checked against the name (SNI and hostname).
    tls = self_signed_tls(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    with ModelServer(model_path, tls=tls) as secure:
        port = port_of(secure)
        allow(settings, ("localhost", port), ("127.0.0.1", port))
        by_name = f"https://localhost:{port}/files/{secure.filename}"
        assert sha256(Path(await fetch(by_name))) == sha256(model_path)
        # The certificate names localhost, not 127.0.0.1: refused.
        by_address = f"https://127.0.0.1:{port}/files/{secure.filename}"
        assert await issue_of(by_address) == url_error(by_address, UNREACHABLE)
