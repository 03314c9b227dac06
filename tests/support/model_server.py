"""A local HTTP server that serves the demo model as Hugging Face and as a URL.

Nothing may be downloaded from the internet here, so the Hugging Face and URL
model sources are tested against this: ``HF_ENDPOINT`` points huggingface_hub
at it.  It speaks just enough of the Hub's protocol (the ``resolve`` route, the
commit and ETag headers, ``X-Error-Code`` on a missing repository) and honours
``Range`` requests, so resumed downloads can be checked.

It also answers as a hostile or broken source would, for the download rules:
``/redirect?to=URL`` redirects anywhere, ``/endless`` streams a GGUF-looking
body with no length, ``/claims`` declares a terabyte, ``/truncated`` hangs up
half way through the model, and ``/page`` is a web page, not a model.  Every
body is bounded (``STREAM_LIMIT``), so a client that ignores its limits still
ends.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


@dataclass
class Progress:
    """What a model download reports, as the agent's status holds it."""

    current: int = 0
    total: int = 0
    filename: str | None = None
    indeterminate: bool = False


COMMIT = "0123456789abcdef0123456789abcdef01234567"
STREAM_LIMIT = 64 << 20
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


def self_signed_tls(directory: Path, name: str = "localhost") -> ssl.SSLContext:
    """A server TLS context for ``name``; its certificate is ``directory/ca.pem``.

    Point ``SSL_CERT_FILE`` at that file for a client to trust it.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file = directory / "ca.pem"
    key_file = directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


class ModelServer:
    def __init__(
        self,
        model_path: Path,
        repo_id: str = "paddler/demo-gguf",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.model_path = model_path
        self.repo_id = repo_id
        self.filename = model_path.name
        self.size = model_path.stat().st_size
        self.etag = hashlib.sha256(str(model_path).encode()).hexdigest()
        self.ranges: list[str] = []
        # (path, headers) of every request, in order.
        self.requests: list[tuple[str, dict[str, str]]] = []
        # Where ``resolve`` redirects, as the real Hub does to its CDN; None
        # serves the file itself.
        self.hub_redirect: str | None = None
        # ``/truncated`` sends the whole model once this is set.
        self.repaired = False
        # Bytes per second for GET bodies; 0 means as fast as possible.
        self.throttle = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._scheme = "https" if tls else "http"
        if tls:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self._scheme}://{host!s}:{port}"

    def __enter__(self) -> ModelServer:
        self._thread.start()
        return self

    def __exit__(self, *args: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                server.requests.append((self.path, dict(self.headers)))
                if self._serve_hostile(body):
                    return
                match = _RESOLVE.match(self.path.split("?")[0])
                if match:
                    if match["repo"] != server.repo_id:
                        self.send_response(404)
                        self.send_header("X-Error-Code", "RepoNotFound")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    if match["file"] != server.filename:
                        self.send_response(404)
                        self.send_header("X-Error-Code", "EntryNotFound")
                        self.send_header("X-Repo-Commit", COMMIT)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    if server.hub_redirect:
                        self.send_response(302)
                        self.send_header("Location", server.hub_redirect)
                        self.send_header("X-Repo-Commit", COMMIT)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self._send_file(body, hub=True)
                    return
                if self.path == f"/files/{server.filename}":
                    self._send_file(body, hub=False)
                    return
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _serve_hostile(self, body: bool) -> bool:
                url = urlsplit(self.path)
                if url.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", parse_qs(url.query)["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif url.path == "/endless":
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self._stream_gguf_like(body)
                    self.close_connection = True
                elif url.path == "/claims":
                    self.send_response(200)
                    self.send_header("Content-Length", str(1 << 40))
                    self.end_headers()
                    self._stream_gguf_like(body)
                    self.close_connection = True
                elif url.path == f"/truncated/{server.filename}":
                    if server.repaired:
                        self._send_file(body, hub=False)
                        return True
                    self.send_response(200)
                    self.send_header("Content-Length", str(server.size))
                    self.end_headers()
                    if body:
                        with server.model_path.open("rb") as handle:
                            self.wfile.write(handle.read(server.size // 2))
                    self.close_connection = True
                elif url.path == "/page":
                    page = b"<html><body>internal dashboard</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    if body:
                        self.wfile.write(page)
                else:
                    return False
                return True

            def _stream_gguf_like(self, body: bool) -> None:
                if not body:
                    return
                sent = 0
                block = b"GGUF" + bytes((1 << 20) - 4)
                while sent < STREAM_LIMIT:
                    try:
                        self.wfile.write(block)
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    sent += len(block)

            def _send_file(self, body: bool, hub: bool) -> None:
                start, end = 0, server.size - 1
                requested = self.headers.get("Range")
                if requested:
                    server.ranges.append(requested)
                    first, _, last = requested.removeprefix("bytes=").partition("-")
                    start = int(first)
                    end = int(last) if last else end
                    if start >= server.size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{server.size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header(
                        "Content-Range", f"bytes {start}-{end}/{server.size}"
                    )
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("Accept-Ranges", "bytes")
                if hub:
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("ETag", f'"{server.etag}"')
                self.end_headers()
                if not body:
                    return
                with server.model_path.open("rb") as handle:
                    handle.seek(start)
                    remaining = end - start + 1
                    chunk = 1 << 20
                    while remaining > 0:
                        data = handle.read(min(chunk, remaining))
                        if not data:
                            break
                        try:
                            self.wfile.write(data)
                        except (BrokenPipeError, ConnectionResetError):
                            return
                        remaining -= len(data)
                        if server.throttle:
                            time.sleep(len(data) / server.throttle)

        return Handler
