"""Who gets in where: every panel route, every key on every surface, Redis over TLS.

The per-surface suites check their own doors (test_api_keys.py,
test_management_api.py, test_panel_views.py); this file checks across them:
that a credential for one surface opens no other, that every route of the
panel (found from its URL configuration, so a new one is covered the day it
is added) is closed to visitors and needs the CSRF token, and that the whole
platform runs against a Redis that wants TLS and a password.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from django.contrib.auth.models import User
from django.test import Client
from django.urls import URLPattern, reverse

from balancer.models import DesiredStateRevision
from balancer.panel import urls as panel_urls
from inference.models import InferenceApiKey
from tests.support.constants import AUTH, MANAGEMENT_ENDPOINTS, MANAGEMENT_TOKEN, ROOT
from tests.support.fleet import start_agent
from tests.support.processes import service_env, stop_process, wait_until
from tests.support.redis_server import RedisServer
from tests.support.staff import create_user, grant_operator_permissions, log_in
from tests.support.streams import raw_prompt_stream, read_ndjson, stream_text
from tests.support.web import WebServer, socket_url, start_web

INFERENCE_KEY = "an-inference-key-for-the-security-tests"


# ------------------------------------------------------------------ panel
def panel_routes() -> list[tuple[str, str]]:
    """(name, path) of every panel route but the login and logout pages."""
    routes = []
    for pattern in panel_urls.urlpatterns:
        assert isinstance(pattern, URLPattern)
        name = pattern.name or ""
        if name in ("login", "logout"):
            continue
        arguments = {key: 1 for key in pattern.pattern.converters}
        routes.append((name, reverse(f"panel:{name}", kwargs=arguments)))
    return routes


PANEL_ROUTES = panel_routes()


@pytest.fixture
def panel_state(db: None) -> Iterator[dict[str, Any]]:
    """Something for each change to act on: a key to revoke, a revision to
    roll back to; and how to tell that nothing changed."""
    InferenceApiKey.objects.create(name="kept", prefix="0" * 12, salt="s", digest="d")

    def snapshot() -> dict[str, Any]:
        return {
            "keys": list(InferenceApiKey.objects.values_list("name", "revoked_at")),
            "revisions": DesiredStateRevision.objects.count(),
        }

    before = snapshot()
    yield before
    assert snapshot() == before


def test_the_panel_routes_are_all_known() -> None:
    # If this fails, a route was added: it is covered below; update the list.
    assert sorted(name for name, _ in PANEL_ROUTES) == [
        "api_key_revoke",
        "api_keys",
        "dashboard",
        "dashboard_stream",
        "model",
        "model_preview",
        "prompt",
        "requests",
        "roll_back",
    ]


@pytest.mark.parametrize(("name", "path"), PANEL_ROUTES)
@pytest.mark.parametrize("who", ["anonymous", "not staff"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_every_panel_route_is_closed_to_all_but_staff(
    panel_state: dict[str, Any], name: str, path: str, who: str, method: str
) -> None:
    client = Client()
    if who == "not staff":
        user = User.objects.create_user("visitor", password="visitor-password-1")
        client.force_login(user)
    body = {"name": "sneaky", "template": "{{ 1 }}"}
    response = client.get(path) if method == "GET" else client.post(path, body)
    if response.status_code == 302:
        assert response["Location"].startswith("/login/?next="), response["Location"]
    else:
        # The event stream answers 401; a method the route does not take, 405
        # (refused before anyone is asked who they are).
        assert response.status_code in (401, 405), (name, response.status_code)


@pytest.mark.parametrize(("name", "path"), PANEL_ROUTES)
def test_every_panel_change_needs_the_csrf_token(
    panel_state: dict[str, Any], name: str, path: str
) -> None:
    operator = User.objects.create_user(
        "operator", password="operator-password-1", is_staff=True
    )
    # Allowed to change things: what refuses the post is the missing token.
    grant_operator_permissions(operator)
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    response = client.post(path, {"name": "sneaky", "template": "{{ 1 }}"})
    # 405: the route changes nothing (it takes no POST).
    assert response.status_code in (403, 405), (name, response.status_code)


# ------------------------------------------------------------ credentials
@pytest.fixture(scope="module")
def locked_web(
    quiet_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebServer]:
    """A web server that wants an inference key (no agent: only doors here)."""
    web = start_web(
        quiet_redis.url,
        tmp_path_factory.mktemp("locked"),
        PADDLER_INFERENCE_API_KEYS=INFERENCE_KEY,
    )
    yield web
    web.stop()


@pytest.mark.parametrize(("method", "template"), MANAGEMENT_ENDPOINTS)
def test_an_inference_key_opens_no_management_endpoint(
    locked_web: WebServer, method: str, template: str
) -> None:
    path = template.format(agent="some-agent", revision=1)
    headers = {"Authorization": f"Bearer {INFERENCE_KEY}"}
    with (
        httpx.Client(base_url=locked_web.url, timeout=10) as client,
        client.stream(method, path, headers=headers, json={}) as response,
    ):
        assert response.status_code == 401


async def test_the_management_token_opens_no_inference_socket(
    locked_web: WebServer,
) -> None:
    for url, headers in [
        (socket_url(locked_web), AUTH),
        (socket_url(locked_web, f"token={MANAGEMENT_TOKEN}"), {}),
    ]:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url, additional_headers=headers):
                pass
        assert refused.value.response.status_code == 403


async def test_a_staff_session_opens_the_socket_only_from_a_page_of_this_site(
    locked_web: WebServer,
) -> None:
    create_user(locked_web, "socket-operator", "socket-operator-password")
    session = log_in(locked_web, "socket-operator", "socket-operator-password")
    cookie = {"Cookie": f"sessionid={session.cookies['sessionid']}"}
    session.close()
    url = socket_url(locked_web)
    async with websockets.connect(
        url, origin=websockets.Origin(locked_web.url), additional_headers=cookie
    ):
        pass
    elsewhere = websockets.Origin("http://elsewhere.example")
    for origin, headers in [
        # A page elsewhere, with the operator's cookie (cross-site hijacking).
        (elsewhere, cookie),
        # No origin at all: not a page of this site either.
        (None, cookie),
        # This site, but no session.
        (websockets.Origin(locked_web.url), {}),
    ]:
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(
                url, origin=origin, additional_headers=headers
            ):
                pass


async def test_a_key_in_the_socket_url_is_not_written_to_the_log(
    locked_web: WebServer,
) -> None:
    async with websockets.connect(socket_url(locked_web, f"token={INFERENCE_KEY}")):
        pass
    log = locked_web.log.read_text()
    assert "inference_socket" in log  # the access log names the socket ...
    assert INFERENCE_KEY not in log  # ... but not its query string


# ------------------------------------------------------------- Redis, TLS
def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, and a certificate it signed for 127.0.0.1 (as a private CA does)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "redis")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {
        "ca": directory / "ca.pem",
        "cert": directory / "redis.pem",
        "key": directory / "redis.key",
    }
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def test_web_and_agents_work_with_a_redis_that_wants_tls_and_a_password(
    tmp_path: Path, greedy_state: dict[str, Any]
) -> None:
    """As the README tells to lock Redis down: TLS only (no plain port),
    ``requirepass``, and a private CA named in the ``rediss://`` URL."""
    from tests.support.processes import free_port

    certificates = make_certificates(tmp_path)
    port = free_port()
    password = "a-redis-password"
    binary = shutil.which("redis-server")
    assert binary
    redis_process = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(certificates["cert"]),
            "--tls-key-file",
            str(certificates["key"]),
            "--tls-ca-cert-file",
            str(certificates["ca"]),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            password,
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"rediss://:{password}@127.0.0.1:{port}/0?ssl_ca_certs={certificates['ca']}"
    web: WebServer | None = None
    try:
        import redis

        client = redis.Redis.from_url(url)
        wait_until(client.ping, 10, "redis-server over TLS")
        client.close()
        with pytest.raises(redis.ConnectionError):
            # The TLS port does not speak plain Redis.
            redis.Redis(port=port, password=password, socket_timeout=2).ping()
        web = start_web(url, tmp_path)
        web.put_desired_state(greedy_state)
        agent = start_agent(url, tmp_path, "tls-agent", 1)
        try:
            web.wait_for_ready_agents(1)
            with raw_prompt_stream(web, "The sky is", 3, timeout=60) as response:
                lines = read_ndjson(response)
            assert "Done" in lines[-1]["Response"]["response"]["GeneratedToken"]
            assert stream_text(lines)
            health = subprocess.run(
                [sys.executable, "manage.py", "agent_health", "--name", "tls-agent"],
                cwd=ROOT,
                env=service_env(url),
                capture_output=True,
                timeout=60,
                check=False,
            )
            assert health.returncode == 0, health.stderr
        finally:
            agent.stop()
    finally:
        if web is not None:
            web.stop()
        stop_process(redis_process)
