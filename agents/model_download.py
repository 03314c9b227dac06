"""Streams a model file from an http(s) URL into the cache, held to safe rules.

Whoever can write the desired state chooses the URL (or the Hugging Face file
behind one), and the agent fetches it from inside the operator's network. So a
download must not become a way to reach what the agent can reach:

- http and https only, on the first URL and on every redirect.
- Redirects are followed here, at most ``MAX_REDIRECTS``, never by the HTTP
  client: each hop's host is resolved, and every address it resolves to must
  be public (not private, loopback, link-local, shared, multicast, reserved,
  unspecified, IPv4-mapped, or a 6to4 address around any of those), unless the
  operator trusts that host in ``PADDLER_MODEL_SOURCE_ALLOWED_HOSTS``. Hosts
  are trusted by the name in the URL, so a name of the attacker's that
  resolves to a trusted address is still refused.
- The connection goes to the address that was checked: the URL is rewritten
  to it, and the name travels in the Host header and as TLS's server name, so
  the certificate is still checked against the name. A DNS answer that
  changes between check and connect (rebinding) is never used. Proxies from
  the environment are not used, since a proxy would connect on our behalf to
  an address we never checked.
- The body is capped at ``PADDLER_MODEL_MAX_BYTES``, by Content-Length before
  any of it is read and by counting while streaming (a missing or lying
  length), and must start with the GGUF magic, so an internal page that
  answers 200 is never kept as a model.
- Every failure to get an answer (a refused or unresolvable address, a closed
  port, a timeout, a port that does not speak HTTP) gives the same
  ``UNREACHABLE`` message: the agent's issues, which the desired state's author
  reads, must not map the network. The detail goes to the agent's log only.
- A download that fails leaves nothing behind: its partial file is removed, so
  the next attempt starts clean. One cancelled (the agent shutting down) keeps
  its partial file, and the next attempt resumes it with a Range request.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
from django.conf import settings

# Shared with the web tier's image fetcher; re-exported for this module's callers.
from balancer.safe_http import is_public_address

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5
# Per step (resolve, connect, each read); a module constant so tests can
# shorten it.
TIMEOUT_S = 30.0
GGUF_MAGIC = b"GGUF"
UNREACHABLE = (
    "the address cannot be reached or is not allowed (the agent's log says why)"
)
MALFORMED = "DownloadUrlIsMalformed"
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}


class DownloadProgress(Protocol):
    current: int
    total: int
    filename: str | None
    indeterminate: bool


class DownloadFailed(Exception):
    """``message`` is safe to show in an issue; ``detail`` is for the log;
    ``variant`` is Paddler's agent issue for the failure, when it has one."""

    def __init__(
        self,
        message: str,
        *,
        detail: str = "",
        status: int | None = None,
        error_code: str | None = None,
        variant: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail or message
        self.variant = variant or _status_variant(status)
        # The HTTP status and X-Error-Code of a final answer that was not the
        # file, so the Hugging Face source can tell a missing repository.
        self.status = status
        self.error_code = error_code


def _status_variant(status: int | None) -> str | None:
    """Paddler's issue for a final answer that was not the file."""
    if status is None:
        return None
    if status in (404, 410):
        return "ModelDoesNotExistAtUrl"
    if status in (401, 403):
        return "DownloadServerDeniedAccess"
    if status >= 500:
        return "DownloadServerErrored"
    return "DownloadServerRejectedRequest"


def _unreachable(detail: str) -> DownloadFailed:
    return DownloadFailed(
        UNREACHABLE, detail=detail, variant="DownloadServerIsUnreachable"
    )


@dataclass(frozen=True)
class DownloadRules:
    # (host, port) pairs; a None port trusts every port of that host.
    allowed_hosts: tuple[tuple[str, int | None], ...] = ()
    max_bytes: int = 256 << 30

    @classmethod
    def from_settings(cls) -> DownloadRules:
        return cls(
            allowed_hosts=tuple(settings.PADDLER_MODEL_SOURCE_ALLOWED_HOSTS),
            max_bytes=settings.PADDLER_MODEL_MAX_BYTES,
        )

    def trusts(self, host: str, port: int) -> bool:
        return any(
            host == allowed and allowed_port in (None, port)
            for allowed, allowed_port in self.allowed_hosts
        )

    def too_large(self, size: int) -> DownloadFailed:
        return DownloadFailed(
            f"the file is larger than PADDLER_MODEL_MAX_BYTES ({self.max_bytes})",
            detail=f"{size} bytes or more against a cap of {self.max_bytes}",
        )


async def download_file(
    url: str,
    target: Path,
    *,
    rules: DownloadRules,
    progress: DownloadProgress,
    on_progress: Callable[[], None],
    headers: dict[str, str] | None = None,
) -> None:
    """Fetch ``url`` into ``target`` (through ``target``.part, renamed at the end).

    Raises ``DownloadFailed``; the log gets its detail. ``headers`` go to the
    first URL's origin only (an Authorization must not follow a redirect to
    another host).
    """
    partial = target.with_name(target.name + ".part")
    progress.filename = target.name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        await _fetch_into(
            url,
            partial,
            rules=rules,
            headers=headers or {},
            progress=progress,
            on_progress=on_progress,
        )
        if _head(partial) != GGUF_MAGIC:
            raise DownloadFailed("the file is not a GGUF model")
        os.replace(partial, target)
    except Exception as error:
        partial.unlink(missing_ok=True)
        raise _failure(url, error) from None
    finally:
        progress.filename = None
        progress.indeterminate = False
        progress.current = progress.total = 0
        on_progress()


def _failure(url: str, error: Exception) -> Exception:
    """What to raise for ``error``, logging its detail."""
    if isinstance(error, DownloadFailed):
        logger.warning("download of %s failed: %s", url, error.detail)
        return error
    logger.warning("download of %s failed: %r", url, error)
    if isinstance(error, httpx.HTTPError):
        return _unreachable(repr(error))
    if isinstance(error, OSError):
        # The cache disk, not the network: say so (a full disk is the usual).
        return DownloadFailed(
            f"cannot write the cache: {error.strerror}",
            variant=_cache_variant(error),
        )
    return error  # a bug, not the source's fault: let it show


def _cache_variant(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return "CacheStorageIsFull"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "CacheDirectoryIsNotWritable"
    return "ModelCacheIsCorrupted"


def _head(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(len(GGUF_MAGIC))


async def _fetch_into(
    url: str,
    partial: Path,
    *,
    rules: DownloadRules,
    headers: dict[str, str],
    progress: DownloadProgress,
    on_progress: Callable[[], None],
) -> None:
    done = partial.stat().st_size if partial.exists() else 0
    if done >= len(GGUF_MAGIC) and _head(partial) != GGUF_MAGIC:
        done = 0  # not the start of a model: never resume onto it
    if done > rules.max_bytes:
        raise rules.too_large(done)
    # Ranges are of the bytes as sent, so ask for them unencoded.
    headers = {**headers, "Accept-Encoding": "identity"}
    if done:
        headers["Range"] = f"bytes={done}-"
    # An explicit transport keeps the environment's proxies out (see above)
    # while still honouring its CA settings.
    async with httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(), timeout=TIMEOUT_S
    ) as client:
        response = await _open(client, url, headers, rules)
        try:
            status = response.status_code
            if status == 416 and done:
                return  # the partial file is already whole
            content_range = response.headers.get("content-range", "")
            if status == 206 and done and content_range.startswith(f"bytes {done}-"):
                pass
            elif status == 200:
                done = 0  # the server ignored the range: start over
            else:
                raise DownloadFailed(
                    f"the server answered HTTP {status}",
                    detail=f"HTTP {status} {content_range}".strip(),
                    status=status,
                    error_code=response.headers.get("x-error-code"),
                )
            length = _content_length(response)
            if length is not None and done + length > rules.max_bytes:
                raise rules.too_large(done + length)
            progress.total = done + length if length is not None else 0
            progress.indeterminate = length is None
            progress.current = done
            on_progress()
            with partial.open("ab" if done else "wb") as handle:
                async for chunk in response.aiter_raw(1 << 20):
                    if done + len(chunk) > rules.max_bytes:
                        raise rules.too_large(done + len(chunk))
                    handle.write(chunk)
                    if done < len(GGUF_MAGIC) <= done + len(chunk):
                        handle.flush()
                        if _head(partial) != GGUF_MAGIC:
                            # Stop fetching what cannot be a model.
                            raise DownloadFailed("the file is not a GGUF model")
                    done += len(chunk)
                    progress.current = done
                    on_progress()
        finally:
            await response.aclose()


def _content_length(response: httpx.Response) -> int | None:
    raw = response.headers.get("content-length")
    if raw is None:
        return None
    if not raw.isdigit():
        raise DownloadFailed(
            "the server sent a malformed Content-Length",
            detail=f"Content-Length: {raw!r}",
        )
    return int(raw)


async def _open(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    rules: DownloadRules,
) -> httpx.Response:
    """GET ``url``, following redirects, each hop checked; the final answer."""
    first_origin: tuple[str, str, int] | None = None
    for _ in range(MAX_REDIRECTS + 1):
        parsed = _parse(url)
        origin = (parsed.scheme, parsed.host, _port(parsed))
        if first_origin is None:
            first_origin = origin
        elif origin != first_origin:
            # A credential for the first host must not reach another one.
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        response = await _send_to_checked_address(client, parsed, headers, rules)
        location = response.headers.get("location")
        if response.status_code not in _REDIRECT_STATUSES or location is None:
            return response
        await response.aclose()
        try:
            url = str(parsed.join(location))
        except httpx.InvalidURL:
            raise DownloadFailed(
                "the server sent a malformed redirect", detail=f"to {location!r}"
            ) from None
    raise DownloadFailed(f"more than {MAX_REDIRECTS} redirects", detail=f"at {url}")


def _parse(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        raise DownloadFailed(
            "the URL is malformed", detail=str(error), variant=MALFORMED
        ) from None
    if parsed.scheme not in _DEFAULT_PORTS:
        raise DownloadFailed(
            "only http and https URLs can be downloaded",
            detail=f"scheme {parsed.scheme!r} in {url}",
            variant=MALFORMED,
        )
    if not parsed.raw_host:
        raise DownloadFailed("the URL has no host", detail=url, variant=MALFORMED)
    return parsed


def _port(url: httpx.URL) -> int:
    return url.port or _DEFAULT_PORTS[url.scheme]


async def _send_to_checked_address(
    client: httpx.AsyncClient,
    url: httpx.URL,
    headers: dict[str, str],
    rules: DownloadRules,
) -> httpx.Response:
    name = url.raw_host.decode("ascii")  # IDNA-encoded, as DNS wants it
    port = _port(url)
    try:
        infos = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM),
            TIMEOUT_S,
        )
    except (OSError, TimeoutError) as error:
        raise _unreachable(f"cannot resolve {name}: {error!r}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not rules.trusts(url.host, port) and not rules.trusts(name, port):
        refused = [address for address in addresses if not is_public_address(address)]
        if refused:
            # One bad address refuses the name: a name that mixes public and
            # internal addresses is someone steering us.
            raise _unreachable(
                f"{name}:{port} resolves to {', '.join(refused)}, which is not "
                "public and not in PADDLER_MODEL_SOURCE_ALLOWED_HOSTS"
            )
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
    raise _unreachable(f"cannot connect to {name}:{port}: {'; '.join(failures)}")
