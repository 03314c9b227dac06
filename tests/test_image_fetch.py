"""The web tier's image fetcher against a real HTTP server on loopback.

Loopback is an address the fetcher refuses, so each test that wants an answer
trusts the server's host and port (what ``PADDLER_IMAGE_FETCH_ALLOWED_HOSTS``
does for an operator); the others check what is refused without it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from balancer.safe_http import is_public_address
from inference.image_fetch import (
    UNREACHABLE,
    FetchRules,
    ImageFetchFailed,
    fetch_images,
    sniff_media_type,
)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
JPEG = b"\xff\xd8\xff\xe0" + b"\x10" * 500


class ImageServer:
    """Serves images and misbehaves on purpose; counts what it saw."""

    def __init__(self) -> None:
        self.concurrent = 0
        self.most_concurrent = 0
        self.endless_cut_off = threading.Event()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                with server.lock:
                    server.concurrent += 1
                    server.most_concurrent = max(
                        server.most_concurrent, server.concurrent
                    )
                try:
                    server.route(self)
                finally:
                    with server.lock:
                        server.concurrent -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def route(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        if path == "/image.png":
            self.send(handler, 200, PNG, "image/png")
        elif path.startswith("/slowish"):
            time.sleep(0.3)
            self.send(handler, 200, JPEG, "application/octet-stream")
        elif path == "/text":
            self.send(handler, 200, b"<html>hello</html>", "text/html")
        elif path == "/missing":
            self.send(handler, 404, b"no", "text/plain")
        elif path == "/slow":
            time.sleep(3)
            self.send(handler, 200, PNG, "image/png")
        elif path == "/liar":
            handler.send_response(200)
            handler.send_header("Content-Length", str(10**9))
            handler.end_headers()
        elif path == "/endless":
            handler.send_response(200)
            handler.send_header("Content-Type", "image/png")
            handler.end_headers()
            try:
                handler.wfile.write(PNG)
                for _ in range(100_000):  # about 6.4 GB: never sent whole
                    handler.wfile.write(b"\x00" * 65536)
            except OSError:
                self.endless_cut_off.set()
        elif path.startswith("/redirect?to="):
            handler.send_response(302)
            handler.send_header("Location", path.removeprefix("/redirect?to="))
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        else:
            self.send(handler, 404, b"", "text/plain")

    def send(
        self, handler: BaseHTTPRequestHandler, status: int, body: bytes, kind: str
    ) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", kind)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    running = ImageServer()
    yield running
    running.stop()


def trusting(server: ImageServer, **changes: Any) -> FetchRules:
    return FetchRules(
        allowed_hosts=(("127.0.0.1", server.port),),
        **{"max_bytes": 1 << 20, "timeout_s": 5.0, **changes},
    )


async def fetch_one(
    url: str, rules: FetchRules
) -> tuple[str, bytes] | ImageFetchFailed:
    (result,) = await fetch_images([url], rules)
    return result


async def test_an_allowed_host_serves_its_image(server: ImageServer) -> None:
    assert await fetch_one(server.url("/image.png"), trusting(server)) == (
        "image/png",
        PNG,
    )


async def test_the_format_comes_from_the_bytes_not_the_content_type(
    server: ImageServer,
) -> None:
    # Served as application/octet-stream.
    assert await fetch_one(server.url("/slowish"), trusting(server)) == (
        "image/jpeg",
        JPEG,
    )


async def test_loopback_is_refused_without_the_allow_list(server: ImageServer) -> None:
    result = await fetch_one(server.url("/image.png"), FetchRules())
    assert isinstance(result, ImageFetchFailed)
    assert result.message == UNREACHABLE
    assert result.status == 400


async def test_the_allow_list_trusts_a_host_and_port_not_the_address(
    server: ImageServer,
) -> None:
    # "localhost" resolves to the trusted address, but is not the trusted name.
    result = await fetch_one(server.url("/image.png", "localhost"), trusting(server))
    assert isinstance(result, ImageFetchFailed)
    assert result.message == UNREACHABLE
    other_port = FetchRules(allowed_hosts=(("127.0.0.1", server.port + 1),))
    result = await fetch_one(server.url("/image.png"), other_port)
    assert isinstance(result, ImageFetchFailed)


@pytest.mark.parametrize(
    "target",
    [
        "http://localhost:{port}/image.png",  # loopback by another name
        "http://10.0.0.1/image.png",  # private
        "http://169.254.169.254/latest/meta-data/",  # link-local (cloud metadata)
        "http://[::1]:{port}/image.png",
    ],
)
async def test_a_redirect_to_an_internal_address_is_refused(
    server: ImageServer, target: str
) -> None:
    url = server.url("/redirect?to=" + target.format(port=server.port))
    result = await fetch_one(url, trusting(server))
    assert isinstance(result, ImageFetchFailed)
    assert result.message == UNREACHABLE


async def test_a_redirect_within_the_allowed_host_is_followed(
    server: ImageServer,
) -> None:
    url = server.url("/redirect?to=/image.png")
    assert await fetch_one(url, trusting(server)) == ("image/png", PNG)


async def test_a_redirect_to_another_scheme_is_refused(server: ImageServer) -> None:
    result = await fetch_one(
        server.url("/redirect?to=file:///etc/passwd"), trusting(server)
    )
    assert isinstance(result, ImageFetchFailed)
    assert "http or https" in result.message


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_closed_port_and_a_refused_address_read_the_same(
    server: ImageServer,
) -> None:
    port = closed_port()
    closed = await fetch_one(
        f"http://127.0.0.1:{port}/x.png",
        FetchRules(allowed_hosts=(("127.0.0.1", port),)),
    )
    refused = await fetch_one(f"http://127.0.0.1:{port}/x.png", FetchRules())
    unresolvable = await fetch_one("http://no-such-host.invalid/x.png", FetchRules())
    assert isinstance(closed, ImageFetchFailed)
    assert isinstance(refused, ImageFetchFailed)
    assert isinstance(unresolvable, ImageFetchFailed)
    assert closed.message == refused.message == unresolvable.message == UNREACHABLE


async def test_a_body_over_the_limit_is_cut_off_with_a_413(server: ImageServer) -> None:
    result = await fetch_one(
        server.url("/endless"), trusting(server, max_bytes=100_000)
    )
    assert isinstance(result, ImageFetchFailed)
    assert result.status == 413
    assert "PADDLER_MAX_IMAGE_BYTES (100000 bytes)" in result.message
    # The fetcher hung up: the server could not send the rest.
    assert server.endless_cut_off.wait(10)


async def test_a_content_length_over_the_limit_is_refused_unread(
    server: ImageServer,
) -> None:
    result = await fetch_one(server.url("/liar"), trusting(server))
    assert isinstance(result, ImageFetchFailed)
    assert result.status == 413


async def test_a_server_too_slow_for_the_budget_is_unreachable(
    server: ImageServer,
) -> None:
    result = await fetch_one(server.url("/slow"), trusting(server, timeout_s=0.5))
    assert isinstance(result, ImageFetchFailed)
    assert result.message == UNREACHABLE


async def test_a_body_that_is_no_image_is_refused(server: ImageServer) -> None:
    result = await fetch_one(server.url("/text"), trusting(server))
    assert isinstance(result, ImageFetchFailed)
    assert "not a PNG, JPEG, WebP, GIF or BMP image" in result.message


async def test_an_error_status_is_named(server: ImageServer) -> None:
    result = await fetch_one(server.url("/missing"), trusting(server))
    assert isinstance(result, ImageFetchFailed)
    assert result.message == "could not be fetched: the server answered 404"


async def test_several_images_are_fetched_at_once_in_order(
    server: ImageServer,
) -> None:
    server.most_concurrent = 0
    urls = [server.url(f"/slowish?{index}") for index in range(4)]
    urls.insert(2, server.url("/image.png"))
    results = await fetch_images(urls, trusting(server))
    assert [r[0] if isinstance(r, tuple) else r for r in results] == [
        "image/jpeg",
        "image/jpeg",
        "image/png",
        "image/jpeg",
        "image/jpeg",
    ]
    assert server.most_concurrent > 1


def test_sniffing_knows_the_formats_the_agents_decode() -> None:
    assert sniff_media_type(PNG) == "image/png"
    assert sniff_media_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff_media_type(b"GIF89a...") == "image/gif"
    assert sniff_media_type(b"BM\x00\x00") == "image/bmp"
    assert sniff_media_type(b"%PDF-1.4") is None


def test_internal_addresses_are_not_public() -> None:
    for address in ("127.0.0.1", "10.1.2.3", "169.254.169.254", "::1", "fd00::1"):
        assert not is_public_address(address)
    assert is_public_address("93.184.216.34")
