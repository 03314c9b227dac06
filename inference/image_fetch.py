"""Fetches the images that requests name by http(s) URL, held to safe rules.

A client names the URL and the web tier fetches it from inside the operator's
network, so the fetch follows ``balancer.safe_http``'s rules (http(s) only,
every address public on every redirect unless the operator trusts the host in
``PADDLER_IMAGE_FETCH_ALLOWED_HOSTS``, the connection to the address checked)
and these:

- The body is capped at ``PADDLER_MAX_IMAGE_BYTES``: by Content-Length before
  any of it is read, and by counting while it streams (a missing or lying
  length), the connection closed at the first byte over.
- All the images of one request are fetched at once and share one time
  budget, ``PADDLER_IMAGE_FETCH_TIMEOUT_MS``: a slow server holds a request
  that long at most, whatever its number of images.
- Every failure to get an answer (an address refused, unresolvable, closed,
  a timeout) gives the same message, ``UNREACHABLE``: a client must not map
  the operator's network by the errors.  The detail goes to the log.
- The body must be an image in a format the agents decode (by its first
  bytes, whatever the Content-Type says).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
from django.conf import settings

from balancer.safe_http import BadUrl, TooManyRedirects, Unreachable, open_checked

logger = logging.getLogger(__name__)

SETTING = "PADDLER_IMAGE_FETCH_ALLOWED_HOSTS"
UNREACHABLE = (
    "could not be fetched: the address cannot be reached, did not answer in "
    "time, or is not allowed"
)
# Images of one request fetched at the same time.
CONCURRENCY = 4

# Leading bytes of the formats the agents decode, and the media type each is.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


class ImageFetchFailed(Exception):
    """An image that could not be fetched; the message is safe to show and
    completes "<the part's path> ...".  ``status``: the HTTP status to answer."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class FetchRules:
    # (host, port) pairs; a None port trusts every port of that host.
    allowed_hosts: tuple[tuple[str, int | None], ...] = ()
    max_bytes: int = 20 << 20
    timeout_s: float = 10.0

    @classmethod
    def from_settings(cls) -> FetchRules:
        return cls(
            allowed_hosts=tuple(settings.PADDLER_IMAGE_FETCH_ALLOWED_HOSTS),
            max_bytes=settings.PADDLER_MAX_IMAGE_BYTES,
            timeout_s=settings.PADDLER_IMAGE_FETCH_TIMEOUT_MS / 1000,
        )

    def trusts(self, host: str, port: int) -> bool:
        return any(
            host == allowed and allowed_port in (None, port)
            for allowed, allowed_port in self.allowed_hosts
        )

    def too_large(self) -> ImageFetchFailed:
        return ImageFetchFailed(
            f"is larger than PADDLER_MAX_IMAGE_BYTES ({self.max_bytes} bytes)",
            status=413,
        )


def sniff_media_type(data: bytes) -> str | None:
    """The image format of ``data`` by its first bytes, or None."""
    for signature, media_type in _SIGNATURES:
        if data.startswith(signature):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


async def fetch_image(
    client: httpx.AsyncClient, url: str, rules: FetchRules
) -> tuple[str, bytes]:
    """The media type and bytes of the image at ``url``; ``ImageFetchFailed``."""
    try:
        response = await open_checked(
            client,
            url,
            trusts=rules.trusts,
            timeout_s=rules.timeout_s,
            setting=SETTING,
            headers={"Accept": "image/*"},
        )
    except BadUrl as error:
        raise ImageFetchFailed(str(error)) from None
    except TooManyRedirects:
        raise ImageFetchFailed("could not be fetched: too many redirects") from None
    except (Unreachable, httpx.HTTPError) as error:
        logger.info("image %s: %s", url[:200], getattr(error, "detail", repr(error)))
        raise ImageFetchFailed(UNREACHABLE) from None
    try:
        if response.status_code != 200:
            raise ImageFetchFailed(
                f"could not be fetched: the server answered {response.status_code}"
            )
        length = response.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > rules.max_bytes:
            raise rules.too_large()
        body = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > rules.max_bytes:
                    raise rules.too_large()
        except httpx.HTTPError as error:
            logger.info("image %s: %r", url[:200], error)
            raise ImageFetchFailed(UNREACHABLE) from None
    finally:
        await response.aclose()
    media_type = sniff_media_type(bytes(body[:16]))
    if media_type is None:
        raise ImageFetchFailed(
            "could not be fetched: the body is not a PNG, JPEG, WebP, GIF or BMP image"
        )
    return media_type, bytes(body)


async def fetch_images(
    urls: Sequence[str], rules: FetchRules
) -> list[tuple[str, bytes] | ImageFetchFailed]:
    """Each URL's image (or why not), in order, fetched ``CONCURRENCY`` at a
    time within one budget of ``rules.timeout_s`` for them all."""
    results: list[tuple[str, bytes] | ImageFetchFailed] = [
        ImageFetchFailed(UNREACHABLE) for _ in urls
    ]
    gate = asyncio.Semaphore(CONCURRENCY)
    timeout = httpx.Timeout(rules.timeout_s)

    async def one(index: int, client: httpx.AsyncClient) -> None:
        async with gate:
            try:
                results[index] = await fetch_image(client, urls[index], rules)
            except ImageFetchFailed as failure:
                results[index] = failure

    # No proxies from the environment (see balancer.safe_http); redirects are
    # followed by open_checked, hop by hop.
    async with httpx.AsyncClient(
        timeout=timeout, trust_env=False, follow_redirects=False
    ) as client:
        tasks = [asyncio.ensure_future(one(i, client)) for i in range(len(urls))]
        try:
            async with asyncio.timeout(rules.timeout_s):
                await asyncio.gather(*tasks)
        except TimeoutError:
            # What has not arrived by now keeps its UNREACHABLE placeholder.
            logger.info("image fetch budget of %.1f s spent", rules.timeout_s)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return results
