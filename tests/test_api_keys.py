"""Inference API keys: their format, storage, and enforcement on every endpoint."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import websockets
from django.test import override_settings
from paddler_client.client_inference import ClientInference
from paddler_client.continue_from_raw_prompt_params import (
    ContinueFromRawPromptParams,
)
from paddler_client.inference_message import InferenceMessageKind

from inference.access import KEYS_CACHE_S, forget_keys, inference_access_allowed
from inference.api_keys import (
    bearer_token,
    digest_matches,
    generate_key,
    key_prefix,
    matches_any,
)
from inference.models import InferenceApiKey
from inference.services import inference_api_key_create, inference_api_key_revoke
from tests.support.constants import AUTH, ROOT
from tests.support.redis_server import RedisServer
from tests.support.web import WebServer, socket_url, start_web

ENV_KEYS = ["first-env-key", "second-env-key"]
RAW_PROMPT = {"raw_prompt": "Hello", "max_tokens": 2}


# ------------------------------------------------------------ framework-free
def test_a_new_key_is_found_by_its_prefix_and_checked_by_its_digest() -> None:
    key = generate_key()
    assert key.plaintext.startswith(f"pdl_{key.prefix}_")
    assert key_prefix(key.plaintext) == key.prefix
    assert key.plaintext not in (key.digest, key.salt)
    assert digest_matches(key.plaintext, key.salt, key.digest)
    assert not digest_matches(key.plaintext + "x", key.salt, key.digest)
    # The same key under another salt has another digest.
    assert generate_key().digest != key.digest


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer ", None),
        (None, None),
    ],
)
def test_bearer_token_is_read_from_the_header(
    header: str | None, token: str | None
) -> None:
    assert bearer_token(header) == token


def test_matches_any_compares_whole_keys() -> None:
    assert matches_any("b", ["a", "b"])
    assert not matches_any("b-", ["a", "b"])
    assert not matches_any("", ["a"])
    assert key_prefix("pdl_short") is None


# ----------------------------------------------------------------- database
@pytest.fixture(autouse=True)
def fresh_keys() -> None:
    """Each test reads the keys of its own database."""
    forget_keys()


@pytest.mark.django_db(transaction=True)
async def test_without_any_key_configured_everyone_may_call() -> None:
    assert await inference_access_allowed(token=None)
    assert await inference_access_allowed(token="whatever an OpenAI client sends")


@pytest.mark.django_db(transaction=True)
async def test_an_active_database_key_is_required_and_revocation_takes_effect() -> None:
    from asgiref.sync import sync_to_async

    key, plaintext = await sync_to_async(inference_api_key_create)(name="ci")
    stored = await InferenceApiKey.objects.aget(pk=key.pk)
    assert plaintext not in (stored.digest, stored.salt, stored.prefix)
    assert await inference_access_allowed(token=plaintext)
    assert not await inference_access_allowed(token=None)
    assert not await inference_access_allowed(token=plaintext[:-1] + "x")
    _, other_plaintext = await sync_to_async(inference_api_key_create)(name="b")
    await sync_to_async(inference_api_key_revoke)(prefix=key.prefix)
    assert not await inference_access_allowed(token=plaintext)
    assert await inference_access_allowed(token=other_plaintext)
    # Revoking by the whole key works too; with no active key the API is open.
    await sync_to_async(inference_api_key_revoke)(prefix=other_plaintext)
    assert await inference_access_allowed(token=None)


@pytest.mark.django_db(transaction=True)
async def test_environment_keys_are_accepted_besides_database_keys() -> None:
    from asgiref.sync import sync_to_async

    _, plaintext = await sync_to_async(inference_api_key_create)(name="db")
    with override_settings(PADDLER_INFERENCE_API_KEYS=ENV_KEYS):
        assert await inference_access_allowed(token="second-env-key")
        assert await inference_access_allowed(token=plaintext)
        assert not await inference_access_allowed(token="third-env-key")
        assert not await inference_access_allowed(token=None)


@pytest.mark.django_db(transaction=True)
async def test_a_burst_of_checks_reads_the_keys_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each request reading the keys for itself held a database connection
    per request in flight: 256 at once took more than PostgreSQL has."""
    from asgiref.sync import sync_to_async

    from inference import access

    _, plaintext = await sync_to_async(inference_api_key_create)(name="burst")
    reads: list[float] = []
    read = access._keys.read

    def counted() -> access.ActiveKeys:
        reads.append(time.monotonic())
        return read()

    monkeypatch.setattr(access._keys, "read", counted)
    monkeypatch.setattr(access._keys, "max_age_s", 60.0)
    checks = [inference_access_allowed(token=plaintext) for _ in range(200)]
    checks += [inference_access_allowed(token=None) for _ in range(56)]
    assert await asyncio.gather(*checks) == [True] * 200 + [False] * 56
    assert len(reads) == 1


@pytest.mark.django_db(transaction=True)
async def test_a_key_revoked_by_another_process_is_refused_within_the_cache_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from asgiref.sync import sync_to_async
    from django.utils import timezone

    from inference import access

    monkeypatch.setattr(access._keys, "max_age_s", 0.3)
    key, plaintext = await sync_to_async(inference_api_key_create)(name="elsewhere")
    _, other = await sync_to_async(inference_api_key_create)(name="kept")
    assert await inference_access_allowed(token=plaintext)
    # As another process revokes it: a row update this process is not told of.
    await InferenceApiKey.objects.filter(pk=key.pk).aupdate(revoked_at=timezone.now())
    await asyncio.sleep(0.35)
    assert not await inference_access_allowed(token=plaintext)
    assert await inference_access_allowed(token=other)


# ----------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def keyed_web(
    api_platform: WebServer,
    api_redis: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WebServer]:
    """A second web replica, with keys, in front of the API fleet's agent."""
    web = start_web(
        api_redis.url,
        tmp_path_factory.mktemp("keyed"),
        PADDLER_INFERENCE_API_KEYS=",".join(ENV_KEYS),
    )
    yield web
    web.stop()


PADDLER_CALLS = [
    ("POST", "/api/v1/continue_from_raw_prompt", RAW_PROMPT),
    (
        "POST",
        "/api/v1/continue_from_conversation_history",
        {"conversation_history": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
    ),
    (
        "POST",
        "/api/v1/generate_embedding_batch",
        {"input_batch": [{"id": "a", "content": "text"}]},
    ),
]
OPENAI_CALLS = [
    (
        "POST",
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": "Hi"}]},
    ),
    ("POST", "/v1/completions", {"model": "m", "prompt": "Hi"}),
    ("POST", "/v1/embeddings", {"model": "m", "input": "Hi"}),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/m", None),
]


def call(
    web: WebServer, method: str, path: str, body: Any, key: str | None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(
        method, f"{web.url}{path}", json=body, headers=headers, timeout=30
    )


@pytest.mark.parametrize(("method", "path", "body"), PADDLER_CALLS)
@pytest.mark.parametrize("key", [None, "wrong-key", AUTH["Authorization"][7:]])
def test_paddler_endpoints_answer_401_without_an_inference_key(
    keyed_web: WebServer, method: str, path: str, body: Any, key: str | None
) -> None:
    response = call(keyed_web, method, path, body, key)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == 401


@pytest.mark.parametrize(("method", "path", "body"), OPENAI_CALLS)
def test_openai_endpoints_answer_401_in_openai_shape(
    keyed_web: WebServer, method: str, path: str, body: Any
) -> None:
    response = call(keyed_web, method, path, body, "wrong-key")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_health_and_the_management_api_do_not_need_an_inference_key(
    keyed_web: WebServer,
) -> None:
    assert httpx.get(f"{keyed_web.url}/health").text == "OK"
    assert keyed_web.agents()  # the management token is enough there


def test_an_environment_key_opens_every_surface(keyed_web: WebServer) -> None:
    response = call(
        keyed_web, "POST", "/api/v1/continue_from_raw_prompt", RAW_PROMPT, ENV_KEYS[1]
    )
    assert response.status_code == 200
    assert '"Done"' in response.text
    with openai.OpenAI(
        base_url=f"{keyed_web.url}/v1", api_key=ENV_KEYS[0], max_retries=0
    ) as client:
        assert client.completions.create(model="m", prompt="Hi", max_tokens=2).usage
        with pytest.raises(openai.AuthenticationError):
            client.with_options(api_key="nope").models.list()


async def test_the_socket_takes_the_key_from_the_header_or_the_token_parameter(
    keyed_web: WebServer,
) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(socket_url(keyed_web)):
            pass
    # daphne can only refuse a handshake with 403 (it lacks the ASGI
    # denial-response extension with which the consumer would answer 401).
    assert refused.value.response.status_code == 403
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(socket_url(keyed_web, "token=wrong")):
            pass
    headers = {"Authorization": f"Bearer {ENV_KEYS[0]}"}
    async with websockets.connect(socket_url(keyed_web), additional_headers=headers):
        pass
    # The official client keeps the URL's query string on the socket's URL.
    async with ClientInference(f"{keyed_web.url}?token={ENV_KEYS[1]}") as client:
        stream = await client.continue_from_raw_prompt(
            ContinueFromRawPromptParams(raw_prompt="Hello", max_tokens=2)
        )
        kinds = [message.kind async for message in stream]
    assert kinds[-1] == InferenceMessageKind.DONE


def manage(web: WebServer, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=web.env,
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout.strip()


def statuses_become(web: WebServer, path: str, key: str | None, status: int) -> None:
    """A request with ``key`` gets ``status`` within twice the keys' cache
    time, and keeps getting it."""
    deadline = time.monotonic() + 2 * KEYS_CACHE_S + 1
    while call(web, "POST", path, RAW_PROMPT, key).status_code != status:
        assert time.monotonic() < deadline, f"still not {status}"
        time.sleep(0.05)
    assert call(web, "POST", path, RAW_PROMPT, key).status_code == status


def test_a_database_key_closes_the_api_until_it_is_revoked(
    api_platform: WebServer, api_redis: RedisServer, tmp_path: Path
) -> None:
    web = start_web(api_redis.url, tmp_path)
    try:
        path = "/api/v1/continue_from_raw_prompt"
        assert call(web, "POST", path, RAW_PROMPT, None).status_code == 200
        # Another process makes and revokes the key: the web process sees it
        # within access.KEYS_CACHE_S.
        key = manage(web, "create_api_key", "ci pipeline")
        assert key.startswith("pdl_")
        statuses_become(web, path, None, 401)
        assert call(web, "POST", path, RAW_PROMPT, key).status_code == 200
        assert "revoked" in manage(web, "revoke_api_key", key_prefix(key) or "")
        statuses_become(web, path, None, 200)
        assert call(web, "POST", path, RAW_PROMPT, key).status_code == 200
    finally:
        web.stop()
