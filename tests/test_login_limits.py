"""Login attempts are limited per username and per client address, in Redis."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client, override_settings

from tests.support.fleet import Fleet
from tests.support.processes import free_port, stop_process, wait_until
from tests.support.redis_server import RedisServer, start_redis
from tests.support.staff import create_user

LIMIT = 3
REFUSED = "Too many failed logins for this username or from this address"
WRONG = "Please enter a correct username and password"


@pytest.fixture(scope="module")
def login_redis() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    stop_process(server.process)


@pytest.fixture
def limits(login_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(login_redis.url)
    client.flushdb()
    with override_settings(
        REDIS_URL=login_redis.url,
        PADDLER_LOGIN_MAX_FAILURES=LIMIT,
        PADDLER_LOGIN_FAILURE_WINDOW_S=300,
    ):
        yield client
    client.close()


@pytest.fixture
def operator(db: None) -> User:
    return User.objects.create_user("op", password="op-password-1", is_staff=True)


def log_in(
    client: Client, username: str, password: str, path: str = "/login/"
) -> tuple[int, str]:
    response = client.post(path, {"username": username, "password": password})
    return response.status_code, response.content.decode()


def logged_in(client: Client) -> bool:
    return client.get("/").status_code == 200


def test_panel_refuses_logins_after_too_many_failures_unchecked(
    limits: redis.Redis, operator: User
) -> None:
    client = Client()
    for _ in range(LIMIT):
        status, page = log_in(client, "op", "wrong-password")
        assert status == 200
        assert WRONG in page
    response = client.post("/login/", {"username": "op", "password": "op-password-1"})
    assert response.status_code == 429
    assert REFUSED in response.content.decode()
    assert 1 <= int(response["Retry-After"]) <= 300
    assert f"try again in {response['Retry-After']} s" in response.content.decode()
    assert not logged_in(client)


def test_a_successful_login_clears_the_count(
    limits: redis.Redis, operator: User
) -> None:
    client = Client()
    for _ in range(LIMIT - 1):
        assert log_in(client, "op", "wrong-password")[0] == 200
    assert log_in(client, "op", "op-password-1")[0] == 302
    client.post("/logout/")
    for _ in range(LIMIT):
        assert log_in(client, "op", "wrong-password")[0] == 200
    assert log_in(client, "op", "op-password-1")[0] == 429


def test_failures_from_one_address_refuse_every_username(
    limits: redis.Redis, operator: User
) -> None:
    client = Client()
    for number in range(LIMIT):
        assert log_in(client, f"guess-{number}", "guess")[0] == 200
    assert log_in(client, "op", "op-password-1")[0] == 429
    # Another address is not concerned.
    other = Client(REMOTE_ADDR="10.0.0.9")
    assert log_in(other, "op", "op-password-1")[0] == 302


def test_failures_for_one_username_refuse_it_from_every_address(
    limits: redis.Redis, operator: User
) -> None:
    User.objects.create_user("other", password="other-password-1", is_staff=True)
    for number in range(LIMIT):
        guesser = Client(REMOTE_ADDR=f"10.0.1.{number}")
        # The username's case does not make a new count.
        assert log_in(guesser, "OP" if number else "op", "guess")[0] == 200
    client = Client(REMOTE_ADDR="10.0.2.1")
    assert log_in(client, "op", "op-password-1")[0] == 429
    assert log_in(client, "other", "other-password-1")[0] == 302


def test_admin_login_refuses_after_too_many_failures(
    limits: redis.Redis, operator: User
) -> None:
    client = Client()
    for _ in range(LIMIT):
        status, page = log_in(client, "op", "wrong-password", "/admin/login/")
        assert status == 200
        assert "enter the correct username and password" in page
    status, page = log_in(client, "op", "op-password-1", "/admin/login/")
    assert REFUSED in page
    assert client.get("/admin/").status_code == 302  # still sent to the login


@override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"])
def test_refusals_end_with_their_window(limits: redis.Redis, db: None) -> None:
    # A cheap hasher: the failures must all fall inside a short window, which
    # the default hasher's deliberate slowness would outlast on a slow machine.
    User.objects.create_user("op", password="op-password-1", is_staff=True)
    with override_settings(PADDLER_LOGIN_FAILURE_WINDOW_S=3):
        client = Client()
        for _ in range(LIMIT):
            assert log_in(client, "op", "wrong-password")[0] == 200
        assert log_in(client, "op", "op-password-1")[0] == 429
        wait_until(
            lambda: log_in(client, "op", "op-password-1")[0] == 302,
            10,
            "the window to end",
        )


@pytest.mark.django_db
def test_logins_are_refused_while_redis_cannot_be_reached(operator: User) -> None:
    # No password is checked without its count: 503, with the reason.
    with override_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"):
        client = Client()
        status, page = log_in(client, "op", "op-password-1")
    assert status == 503
    assert "cannot reach Redis" in page
    assert not logged_in(client)


def live_log_in(url: str, username: str, password: str) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=10) as client:
        client.get("/login/").raise_for_status()
        return client.post(
            "/login/",
            data={
                "username": username,
                "password": password,
                "csrfmiddlewaretoken": client.cookies["csrftoken"],
            },
        )


def test_failures_on_one_replica_refuse_logins_on_another(fleet: Fleet) -> None:
    env = {"PADDLER_LOGIN_MAX_FAILURES": str(LIMIT)}
    first, second = fleet.web(**env), fleet.web(**env)
    create_user(second, "op", "op-password-1")
    for _ in range(LIMIT):
        response = live_log_in(first.url, "op", "wrong-password")
        assert response.status_code == 200
        assert WRONG in response.text
    response = live_log_in(second.url, "op", "op-password-1")
    assert response.status_code == 429
    assert REFUSED in response.text
