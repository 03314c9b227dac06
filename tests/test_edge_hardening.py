"""What a hostile client gets from the web tier (issue 21, the web edge).

Each test is an attack that used to get a 500, a connection held open, a
socket any web page could drive, or Redis's address: it now gets a 4xx with a
message that names the problem, or a generic 503.  Fuzzed variants of the
same inputs are in ``test_fuzz.py``; bodies and socket sizes in
``test_request_limits.py``.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import httpx
import pytest
import websockets
from django.test import override_settings

from inference.socket_admission import host_allowed, origin_allowed
from tests.support.constants import AUTH
from tests.support.raw_clients import connect, web_port
from tests.support.redis_server import RedisServer, start_redis
from tests.support.web import WebServer, socket_url, start_web

HUGE_INTEGER = "9" * 5000
PADDLER_BODIES = {
    "/api/v1/continue_from_raw_prompt": '{"raw_prompt": %s, "max_tokens": %s}',
    "/api/v1/continue_from_conversation_history": (
        '{"conversation_history": [{"role": "user", "content": %s}], "max_tokens": %s}'
    ),
    "/api/v1/generate_embedding_batch": (
        '{"input_batch": [{"id": "a", "content": %s}], '
        '"normalization_method": {"RmsNorm": {"epsilon": %s}}}'
    ),
}
OPENAI_BODIES = {
    "/v1/chat/completions": (
        '{"model": "m", "messages": [{"role": "user", "content": %s}], '
        '"max_tokens": %s}'
    ),
    "/v1/completions": '{"model": "m", "prompt": %s, "max_tokens": %s}',
    "/v1/embeddings": '{"model": "m", "input": [%s], "dimensions": %s}',
}
BODIES = PADDLER_BODIES | OPENAI_BODIES


def message_of(response: httpx.Response) -> str:
    error = response.json()["error"]
    return str(error["message"] if "message" in error else error["description"])


@pytest.mark.parametrize("path", list(BODIES))
@pytest.mark.parametrize(
    "attack",
    [
        # (what, the text, the number, what the message says)
        ("a 5,000-digit integer", '"hi"', HUGE_INTEGER, "integer of 5000 digits"),
        ("a 400-digit integer", '"hi"', "9" * 400, "integer of 400 digits"),
        ("a lone surrogate", '"\\ud800"', "1", "lone UTF-16 surrogate"),
        ("NaN", '"hi"', "NaN", "NaN, which is not a JSON number"),
    ],
)
def test_inference_bodies_that_used_to_give_500_get_400(
    web: WebServer, path: str, attack: tuple[str, str, str, str]
) -> None:
    case, text, number, expected = attack
    body = BODIES[path] % (text, number)
    response = httpx.post(
        f"{web.url}{path}",
        content=body.encode(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400, (case, response.text)
    assert expected in message_of(response), case


def test_a_surrogate_is_named_where_it_is(web: WebServer) -> None:
    body = PADDLER_BODIES["/api/v1/continue_from_conversation_history"] % (
        '"ok \\ud800"',
        "1",
    )
    response = httpx.post(
        f"{web.url}/api/v1/continue_from_conversation_history", content=body
    )
    assert response.status_code == 400
    assert "conversation_history[0].content" in message_of(response)
    # "\ud83d\ude00" is one emoji, as ensure_ascii encoders write it: the body
    # gets as far as validation (an unknown field, so nothing waits a slot).
    body = '{"raw_prompt": "\\ud83d\\ude00", "max_tokens": 1, "unknown": 1}'
    response = httpx.post(f"{web.url}/api/v1/continue_from_raw_prompt", content=body)
    assert response.status_code == 400
    assert message_of(response) == "unknown: unknown field"


@pytest.mark.parametrize(
    ("case", "number", "expected"),
    [
        ("a 5,000-digit integer", HUGE_INTEGER, "integer of 5000 digits"),
        ("a lone surrogate", '"\\ud800"', "lone UTF-16 surrogate"),
    ],
)
async def test_socket_answers_what_used_to_kill_it_with_an_error_envelope(
    web: WebServer, case: str, number: str, expected: str
) -> None:
    """The consumer used to die on these (the socket closed with 1011); now
    each gets a 400 envelope keyed to its request, and the socket goes on."""
    message = (
        '{"Request": {"id": "r1", "request": {"ContinueFromRawPrompt": '
        '{"raw_prompt": "hi", "max_tokens": ' + number + "}}}}"
    )
    async with websockets.connect(socket_url(web)) as socket:
        await socket.send(message)
        error = json.loads(await socket.recv())["Error"]
        assert error["request_id"] == "r1", case
        assert error["error"]["code"] == 400
        assert expected in error["error"]["description"]
        await socket.send("{not json")
        assert json.loads(await socket.recv())["Error"]["error"]["code"] == 400


MANAGEMENT_ROUTES = [
    "/api/v1/agents",
    "/api/v1/buffered_requests",
    "/api/v1/balancer_desired_state",
    "/api/v1/balancer_applicable_state",
    "/metrics",
]


@pytest.mark.parametrize("path", MANAGEMENT_ROUTES)
@pytest.mark.parametrize("token", ["é".encode("latin-1"), "тест".encode(), b"\xff\xfe"])
def test_a_bearer_token_outside_ascii_gets_401_on_management_routes(
    web: WebServer, path: str, token: bytes
) -> None:
    response = httpx.get(
        f"{web.url}{path}", headers={b"Authorization": b"Bearer " + token}
    )
    assert response.status_code == 401
    assert "authentication required" in response.json()["error"]


def test_a_desired_state_with_a_lone_surrogate_gets_400(web: WebServer) -> None:
    body = (
        '{"model": "None", "chat_template_override": {"content": "\\udc00"}, '
        '"use_chat_template_override": true, "inference_parameters": {}}'
    )
    response = httpx.put(
        f"{web.url}/api/v1/balancer_desired_state", content=body, headers=AUTH
    )
    assert response.status_code == 400
    assert "lone UTF-16 surrogate" in response.json()["error"]


def test_a_surrogate_under_a_key_that_has_one_too_gets_400(web: WebServer) -> None:
    """The path that names where the surrogate is holds the key itself:
    written as it was, the error message could not be encoded (500)."""
    body = '{"chat_template_override": {"\\ud800": "a\\udfffb"}}'
    response = httpx.put(
        f"{web.url}/api/v1/balancer_desired_state", content=body, headers=AUTH
    )
    assert response.status_code == 400
    assert "chat_template_override.\\ud800" in response.json()["error"]


# ------------------------------------------------------------ origins, hosts
def handshake(web: WebServer, host: str, origin: str | None, query: str = "") -> int:
    """The status daphne answers a socket handshake with."""
    sock = connect(web)
    extra = f"Origin: {origin}\r\n" if origin else ""
    path = f"/api/v1/inference_socket?{query}" if query else "/api/v1/inference_socket"
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        ).encode()
    )
    sock.settimeout(10)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    sock.close()
    return int(head.split(b" ", 2)[1])


def test_with_no_keys_the_socket_refuses_pages_of_other_sites(web: WebServer) -> None:
    here = f"127.0.0.1:{web_port(web)}"
    # A page of any site could drive the open socket.
    assert handshake(web, here, "http://evil.example") == 403
    # DNS rebinding: evil.example resolves to 127.0.0.1, and the page is
    # "same-origin" with the socket; its Host is still evil.example.
    assert handshake(web, "evil.example", "http://evil.example") == 403
    assert handshake(web, "evil.example", None) == 403
    # A page of this site, and a program (no Origin), get in.
    assert handshake(web, here, f"http://{here}") == 101
    assert handshake(web, here, None) == 101


def test_inference_paths_refuse_a_host_that_is_not_allowed(web: WebServer) -> None:
    for path in ("/api/v1/continue_from_raw_prompt", "/v1/completions"):
        response = httpx.post(
            f"{web.url}{path}", json={}, headers={"Host": "evil.example"}
        )
        assert response.status_code == 400
        assert "Host 'evil.example' is not allowed" in message_of(response)
    models = httpx.get(f"{web.url}/v1/models", headers={"Host": "evil.example"})
    assert models.status_code == 400
    # Health checks come by address, from inside the deployment.
    health = httpx.get(f"{web.url}/health", headers={"Host": "10.1.2.3:8000"})
    assert health.text == "OK"


def scope(host: str | None, origin: str | None) -> dict[str, object]:
    headers = [] if host is None else [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return {"type": "websocket", "headers": headers}


def test_configured_origins_may_open_the_socket() -> None:
    app = "https://app.example"
    with override_settings(PADDLER_ALLOWED_ORIGINS=[app]):
        assert origin_allowed(scope("api.example", app))
        assert not origin_allowed(scope("api.example", "https://other.example"))
    with override_settings(PADDLER_ALLOWED_ORIGINS=["*"]):
        assert origin_allowed(scope("api.example", "https://other.example"))


def test_socket_hosts_are_checked_as_django_checks_them() -> None:
    with override_settings(ALLOWED_HOSTS=["api.example", ".corp.example"]):
        assert host_allowed("api.example:8000")
        assert host_allowed("web.corp.example")
        assert not host_allowed("evil.example")
        assert not host_allowed(None)
        assert not host_allowed("")


@pytest.fixture(scope="module")
def keyed_web(
    quiet_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebServer]:
    web = start_web(
        quiet_redis.url,
        tmp_path_factory.mktemp("keyed"),
        PADDLER_INFERENCE_API_KEYS="edge-key",
    )
    yield web
    web.stop()


async def test_with_a_key_the_socket_opens_from_any_page(keyed_web: WebServer) -> None:
    """A key is proof enough: a page elsewhere cannot know it.  Without one,
    the page is refused, as before; a Host not allowed is refused either way."""
    elsewhere = websockets.Origin("https://app.example")
    url = socket_url(keyed_web, "token=edge-key")
    async with websockets.connect(url, origin=elsewhere) as socket:
        await socket.send("{not json")
        assert json.loads(await socket.recv())["Error"]["error"]["code"] == 400
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(socket_url(keyed_web), origin=elsewhere):
            pass
    # The Host is checked whatever the key, as for HTTP.
    here = f"127.0.0.1:{web_port(keyed_web)}"
    assert handshake(keyed_web, here, None, query="token=edge-key") == 101
    assert handshake(keyed_web, "evil.example", None, query="token=edge-key") == 403


# ------------------------------------------------------------- Redis errors
def test_redis_errors_do_not_show_redis_address_to_clients(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """With Redis gone, a request gets 503 and a message that says so, not
    "Error 111 connecting to 127.0.0.1:<port>"; the log keeps the details."""
    redis = start_redis()
    web = start_web(redis.url, tmp_path_factory.mktemp("redis-gone"))
    try:
        redis.process.send_signal(signal.SIGKILL)
        redis.process.wait()
        responses = [
            httpx.post(
                f"{web.url}/api/v1/continue_from_raw_prompt",
                json={"raw_prompt": "Hi", "max_tokens": 1},
                timeout=60,
            ),
            httpx.post(
                f"{web.url}/v1/completions",
                json={"model": "m", "prompt": "Hi", "max_tokens": 1},
                timeout=60,
            ),
        ]
        for response in responses:
            assert response.status_code == 503
            assert message_of(response) == "The balancer cannot reach Redis"
            assert str(redis.port) not in response.text
        assert f"127.0.0.1:{redis.port}" in web.log.read_text()
    finally:
        web.stop()
