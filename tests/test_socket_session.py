"""Which pages may open the inference socket with a staff session."""

from __future__ import annotations

from typing import Any

from django.test import override_settings

from inference.socket_admission import same_site, staff_session


def scope(origin: str | None, host: str = "panel.example:8000") -> dict[str, Any]:
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return {"type": "websocket", "headers": headers}


def test_only_pages_of_this_site_count() -> None:
    assert same_site(scope("http://panel.example:8000"))
    assert same_site(scope("https://panel.example:8000"))
    assert not same_site(scope("http://elsewhere.example"))
    assert not same_site(scope("http://panel.example:9000"))
    assert not same_site(scope("http://panel.example"))
    assert not same_site(scope(None))


def test_a_trusted_origin_counts_behind_a_proxy_that_rewrites_the_host() -> None:
    proxied = scope("https://panel.example", host="web-1:8000")
    assert not same_site(proxied)
    with override_settings(CSRF_TRUSTED_ORIGINS=["https://panel.example"]):
        assert same_site(proxied)


async def test_without_a_session_nobody_is_staff() -> None:
    assert not await staff_session(scope("http://panel.example:8000"))
