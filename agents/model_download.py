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
- A credential (``Authorization``) goes to the first URL's origin only.
- The rules above are ``balancer.safe_http``'s, which the web tier's image
  fetcher holds to as well; this module turns its failures into
  ``DownloadFailed``, with the messages an agent's issues have always had.
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

import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
from django.conf import settings

# The checked connect and redirect walk, shared with the web tier's image
# fetcher.
from balancer.safe_http import (
    MAX_REDIRECTS,
    BadUrl,
    BadUrlKind,
    TooManyRedirects,
    Unreachable,
    open_checked,
    parse_url,
)

logger = logging.getLogger(__name__)

# Per step (resolve, connect, each read); a module constant so tests can
# shorten it.
TIMEOUT_S = 30.0
GGUF_MAGIC = b"GGUF"
UNREACHABLE = (
    "the address cannot be reached or is not allowed (the agent's log says why)"
)
MALFORMED = "DownloadUrlIsMalformed"
# The allow-list that the log's detail names when an address is refused.
SETTING = "PADDLER_MODEL_SOURCE_ALLOWED_HOSTS"


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
    """GET ``url``, following redirects, each hop checked (``safe_http``); the
    final answer.  safe_http's failures become this module's, so an issue
    reads as it always has."""
    _parse(url)  # the first URL's faults, in this module's words
    try:
        return await open_checked(
            client,
            url,
            trusts=rules.trusts,
            timeout_s=TIMEOUT_S,
            setting=SETTING,
            headers=headers,
        )
    except BadUrl as error:
        # Only a redirect can be bad here: the first URL was checked above.
        if error.kind == "malformed_redirect":
            raise DownloadFailed(
                "the server sent a malformed redirect", detail=str(error)
            ) from None
        raise _bad_url(str(error), error.kind, f"a redirect {error}") from None
    except TooManyRedirects as error:
        raise DownloadFailed(
            f"more than {MAX_REDIRECTS} redirects", detail=str(error)
        ) from None
    except Unreachable as error:
        raise _unreachable(error.detail) from None


def _parse(url: str) -> httpx.URL:
    try:
        return parse_url(url)
    except BadUrl as error:
        raise _bad_url(str(error), error.kind, url) from None


def _bad_url(reason: str, kind: BadUrlKind, detail: str) -> DownloadFailed:
    message = {
        "scheme": "only http and https URLs can be downloaded",
        "no_host": "the URL has no host",
    }.get(kind, "the URL is malformed")
    return DownloadFailed(message, detail=f"{detail}: {reason}", variant=MALFORMED)
