"""Staff users in a web server's database, and clients logged in as them."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.web import WebServer, manage

# What an operator who may change things holds (a staff user without them
# reads everything and changes nothing).
OPERATOR_PERMISSIONS = (
    "balancer.change_desiredstaterevision",
    "inference.add_inferenceapikey",
    "inference.change_inferenceapikey",
)


def grant_operator_permissions(user: Any) -> None:
    """Let ``user`` (a user of the test's own database) change things."""
    from django.contrib.auth.models import Permission

    codenames = [name.partition(".")[2] for name in OPERATOR_PERMISSIONS]
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))


def grant_script(username: str) -> str:
    """Python for ``manage.py shell`` that lets ``username`` change things."""
    codenames = [name.partition(".")[2] for name in OPERATOR_PERMISSIONS]
    return (
        "from django.contrib.auth import get_user_model; "
        "from django.contrib.auth.models import Permission; "
        f"get_user_model().objects.get(username={username!r}).user_permissions"
        f".set(Permission.objects.filter(codename__in={codenames!r}))"
    )


def create_user(
    web: WebServer, username: str, password: str, *, read_only: bool = False
) -> None:
    """A staff user in ``web``'s database (the admin lets only staff log in),
    with the permissions to change things unless ``read_only``."""
    manage(
        web,
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model; "
        f"user, _ = get_user_model().objects.get_or_create(username={username!r}); "
        f"user.is_staff = True; user.set_password({password!r}); user.save(); "
        "user.user_permissions.clear()"
        + ("" if read_only else f"; {grant_script(username)}"),
    )


def set_staff(web: WebServer, username: str, staff: bool) -> None:
    # Only the flag: a new password hash would end the user's sessions.
    manage(
        web,
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model; "
        f"get_user_model().objects.filter(username={username!r})"
        f".update(is_staff={staff!r})",
    )


def log_in(web: WebServer, username: str, password: str) -> httpx.Client:
    """A client holding a session, logged in through the admin's login form."""
    client = httpx.Client(base_url=web.url, timeout=10)
    client.get("/admin/login/").raise_for_status()
    response = client.post(
        "/admin/login/?next=/admin/",
        data={
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": client.cookies["csrftoken"],
            "next": "/admin/",
        },
    )
    assert response.status_code == 302, response.text
    assert "sessionid" in client.cookies
    return client


def csrf_headers(client: httpx.Client) -> dict[str, str]:
    """What a page of ours would send with a change made through a session."""
    return {"X-CSRFToken": client.cookies["csrftoken"]}
