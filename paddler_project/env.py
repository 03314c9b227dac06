"""Typed readers for deploy-specific settings taken from environment variables.

Each helper rejects a malformed value with an ``ImproperlyConfigured`` that names
the variable, so a bad deploy fails at start instead of at the first request.
"""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name) or default
    if value not in choices:
        raise ImproperlyConfigured(
            f"{name} must be one of {', '.join(choices)}, got {value!r}"
        )
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {raw!r}")


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_origins(name: str) -> list[str]:
    """Comma-separated web origins (``scheme://host[:port]``), or ``*``."""
    origins = env_list(name, [])
    for origin in origins:
        if origin == "*":
            continue
        scheme, _, rest = origin.partition("://")
        if (
            scheme not in ("http", "https")
            or not rest
            or "/" in rest
            or origin != origin.strip()
        ):
            raise ImproperlyConfigured(
                f"{name} must list origins such as https://app.example.com "
                f"(scheme and host, no path) or *, got {origin!r}"
            )
    return origins


def env_redis_url(name: str, default: str) -> str:
    value = os.environ.get(name, default)
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ImproperlyConfigured(
            f"{name} must be a redis://, rediss:// or unix:// URL, got {value!r}"
        )
    return value


def env_host_port(name: str) -> str:
    """A ``host:port`` address, or "" when unset."""
    value = os.environ.get(name, "").strip()
    if not value:
        return ""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ImproperlyConfigured(f"{name} must be host:port, got {value!r}")
    return value


def env_hosts(name: str) -> list[tuple[str, int | None]]:
    """Comma-separated ``host`` or ``host:port`` entries (``[v6]:port`` for IPv6).

    A ``None`` port means any port of that host.  Hosts are lowercased, as URLs
    carry them.
    """
    hosts: list[tuple[str, int | None]] = []
    for entry in env_list(name, []):
        if entry.startswith("["):
            host, closed, rest = entry[1:].partition("]")
            port = rest.removeprefix(":") if closed and rest else None
            malformed = not closed or (bool(rest) and not rest.startswith(":"))
        elif entry.count(":") == 1:
            host, _, port = entry.partition(":")
            malformed = False
        else:  # a plain name, or a bare IPv6 address
            host, port = entry, None
            malformed = ":" in entry and not _is_ipv6(entry)
        if port is not None and (not port.isdigit() or not 0 < int(port) < 65536):
            malformed = True
        if malformed or not host:
            raise ImproperlyConfigured(
                f"{name} must list host or host:port entries, got {entry!r}"
            )
        hosts.append((host.lower(), int(port) if port is not None else None))
    return hosts


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


SENTINEL_PORT = 26379


def env_sentinels(name: str) -> list[tuple[str, int]]:
    """Comma-separated Redis Sentinel addresses, ``host`` or ``host:port``
    (``[v6]:port`` for IPv6; the port defaults to Sentinel's 26379)."""
    sentinels = []
    for host, port in env_hosts(name):
        sentinels.append((host, SENTINEL_PORT if port is None else port))
    return sentinels


def redis_master_options(url: str) -> dict[str, object]:
    """The database number and credentials a ``redis://`` URL gives: what a
    Sentinel client needs besides the master's address."""
    parsed = urlsplit(url)
    options: dict[str, object] = {}
    path = parsed.path.strip("/")
    if path:
        if not path.isdigit():
            raise ImproperlyConfigured(
                f"REDIS_URL's path must be a database number, got {path!r}"
            )
        options["db"] = int(path)
    if parsed.username:
        options["username"] = unquote(parsed.username)
    if parsed.password:
        options["password"] = unquote(parsed.password)
    return options
