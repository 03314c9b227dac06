"""GET from a URL a user chose, without reaching what the server can reach.

Framework-free.  Both tiers fetch URLs that someone else wrote: the agent a
model file named in the desired state (``agents.model_download``), the web
tier an image named in a request (``inference.image_fetch``).  Either would
otherwise become a way into the operator's network, so both hold to these
rules:

- http and https only, on the first URL and on every redirect.
- Redirects are followed here, at most ``MAX_REDIRECTS``, never by the HTTP
  client: each hop's host is resolved, and every address it resolves to must
  be public (``is_public_address``), unless the caller trusts that host (an
  operator's allow-list).  Hosts are trusted by the name in the URL, so a
  name of the attacker's that resolves to a trusted address is still refused.
- The connection goes to the address that was checked: the URL is rewritten
  to it, and the name travels in the Host header and as TLS's server name, so
  the certificate is still checked against the name.  A DNS answer that
  changes between check and connect (rebinding) is never used.  The client
  must not use proxies from the environment (``trust_env=False``): a proxy
  would connect on our behalf to an address we never checked.
- Credentials go to the first URL's origin only: an ``Authorization`` header
  is dropped at the first redirect to another scheme, host or port (Hugging
  Face sends its files from a CDN, which must not see the user's token).
- Every failure to get an answer (a refused or unresolvable address, a closed
  port, a port that does not speak HTTP) raises ``Unreachable``, whose detail
  is for the log only: what a client reads must not map the network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from typing import Literal

import httpx

MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
DEFAULT_PORTS = {"http": 80, "https": 443}

# (host, port) -> whether the operator trusts it with internal addresses.
Trusts = Callable[[str, int], bool]


class Unreachable(Exception):
    """No answer from the URL's host; ``detail`` says why, for the log only."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


BadUrlKind = Literal["malformed", "scheme", "no_host", "malformed_redirect"]


class BadUrl(ValueError):
    """A URL that is not one we fetch; the message is safe to show, and
    ``kind`` says which rule it broke (for callers with messages of their
    own)."""

    def __init__(self, message: str, kind: BadUrlKind) -> None:
        super().__init__(message)
        self.kind: BadUrlKind = kind


class TooManyRedirects(Exception):
    pass


def is_public_address(text: str) -> bool:
    """Whether an address is one the public internet routes to a single host."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None or address.is_site_local:
            return False
        if address.sixtofour is not None:
            # 6to4 carries an IPv4 address that a relay would reach for us.
            return is_public_address(str(address.sixtofour))
    # Python's is_global lets multicast and some reserved ranges through
    # (224.0.0.0/4, ff0e::/16, ::ffff:0:0/96, NAT64's 64:ff9b::/96).
    return address.is_global and not (address.is_multicast or address.is_reserved)


def parse_url(url: str) -> httpx.URL:
    """An http(s) URL with a host; ``BadUrl`` otherwise."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise BadUrl("is a malformed URL", "malformed") from None
    if parsed.scheme not in DEFAULT_PORTS:
        raise BadUrl("must be an http or https URL", "scheme")
    if not parsed.raw_host:
        raise BadUrl("has no host", "no_host")
    return parsed


def url_port(url: httpx.URL) -> int:
    return url.port or DEFAULT_PORTS[url.scheme]


def url_origin(url: httpx.URL) -> tuple[str, str, int]:
    return (url.scheme, url.host, url_port(url))


async def checked_addresses(
    url: httpx.URL, *, trusts: Trusts, timeout_s: float, setting: str
) -> list[str]:
    """The addresses of ``url``'s host, each of them allowed; ``Unreachable``
    when the name does not resolve or resolves to an address not allowed.

    ``setting`` names the allow-list in the log's detail.
    """
    name = url.raw_host.decode("ascii")  # IDNA-encoded, as DNS wants it
    port = url_port(url)
    try:
        infos = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM),
            timeout_s,
        )
    except (OSError, TimeoutError) as error:
        raise Unreachable(f"cannot resolve {name}: {error!r}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not trusts(url.host, port) and not trusts(name, port):
        refused = [address for address in addresses if not is_public_address(address)]
        if refused:
            # One bad address refuses the name: a name that mixes public and
            # internal addresses is someone steering us.
            raise Unreachable(
                f"{name}:{port} resolves to {', '.join(refused)}, which is not "
                f"public and not in {setting}"
            )
    return addresses


async def send_to_checked_address(
    client: httpx.AsyncClient,
    url: httpx.URL,
    headers: dict[str, str],
    *,
    trusts: Trusts,
    timeout_s: float,
    setting: str,
) -> httpx.Response:
    """GET ``url`` (no redirect followed) from an address that was checked;
    the response is streamed: the caller reads and closes it."""
    addresses = await checked_addresses(
        url, trusts=trusts, timeout_s=timeout_s, setting=setting
    )
    name = url.raw_host.decode("ascii")
    extensions = {"sni_hostname": name} if url.scheme == "https" else {}
    failures: list[str] = []
    for address in addresses:
        request = client.build_request(
            "GET",
            url.copy_with(host=address),
            headers={**headers, "Host": url.netloc.decode("ascii")},
            extensions=extensions,
        )
        try:
            return await client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            failures.append(f"{address}: {error!r}")  # try the next address
    raise Unreachable(f"cannot connect to {name}:{url_port(url)}: {failures}")


async def open_checked(
    client: httpx.AsyncClient,
    url: str,
    *,
    trusts: Trusts,
    timeout_s: float,
    setting: str,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """GET ``url``, following redirects, each hop checked; the final answer,
    streamed.  ``BadUrl`` for a URL (or a redirect) that is not http(s),
    ``Unreachable``, or ``TooManyRedirects``.  ``headers`` go with every hop
    but an ``Authorization``, which goes to ``url``'s origin only."""
    headers = dict(headers or {})
    first_origin: tuple[str, str, int] | None = None
    for _ in range(MAX_REDIRECTS + 1):
        parsed = parse_url(url)
        origin = url_origin(parsed)
        if first_origin is None:
            first_origin = origin
        elif origin != first_origin:
            # A credential for the first origin must not reach another one.
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        response = await send_to_checked_address(
            client, parsed, headers, trusts=trusts, timeout_s=timeout_s, setting=setting
        )
        location = response.headers.get("location")
        if response.status_code not in REDIRECT_STATUSES or location is None:
            return response
        await response.aclose()
        try:
            url = str(parsed.join(location))
        except httpx.InvalidURL:
            raise BadUrl("redirects to a malformed URL", "malformed_redirect") from None
    raise TooManyRedirects(f"more than {MAX_REDIRECTS} redirects, at {url}")
