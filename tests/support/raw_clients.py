"""Clients on bare sockets, for what real client libraries refuse to do.

A stalled reader (a library reads in the background), a WebSocket text frame
that is not UTF-8, a frame larger than the server allows: these need bytes
written by hand.  RFC 6455 framing, client side (frames are masked).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

from tests.support.web import WebServer

# As small a receive buffer as the kernel allows: what the server cannot send
# then piles up on the server's side at once.
SMALL_RECEIVE_BUFFER = 2048

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


def web_port(web: WebServer) -> int:
    return int(web.url.rsplit(":", 1)[1])


def connect(web: WebServer, *, receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket()
    if receive_buffer is not None:
        # Before connect(): the window the client offers is set then.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", web_port(web)))
    return sock


def http_post(web: WebServer, path: str, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{web_port(web)}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


def drain(sock: socket.socket, timeout: float = 10) -> tuple[int, str]:
    """Read all the server left: bytes received, and how the connection ended."""
    sock.settimeout(timeout)
    received = 0
    try:
        while chunk := sock.recv(65536):
            received += len(chunk)
    except ConnectionResetError:
        return received, "reset"
    except TimeoutError:
        return received, "still open"
    finally:
        sock.close()
    return received, "closed"


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One masked client frame."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    length = len(payload)
    if length < 126:
        head.append(0x80 | length)
    elif length < 1 << 16:
        head.append(0x80 | 126)
        head += struct.pack("!H", length)
    else:
        head.append(0x80 | 127)
        head += struct.pack("!Q", length)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes(head) + mask + masked


@dataclass
class Frame:
    opcode: int
    payload: bytes

    def json(self) -> Any:
        return json.loads(self.payload)

    @property
    def close_code(self) -> int | None:
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        return int(struct.unpack("!H", self.payload[:2])[0])

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode("utf-8", "replace")


class RawWebSocket:
    """A WebSocket client that writes and reads frames by hand."""

    def __init__(
        self,
        web: WebServer,
        path: str = "/api/v1/inference_socket",
        *,
        receive_buffer: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.sock = connect(web, receive_buffer=receive_buffer)
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{web_port(web)}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"{extra}\r\n"
            ).encode()
        )
        self.sock.settimeout(30)
        self._buffer = b""
        while b"\r\n\r\n" not in self._buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"handshake refused: {self._buffer!r}")
            self._buffer += chunk
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        self.status = int(head.split(b" ", 2)[1])
        if self.status != 101:
            raise ConnectionError(f"handshake refused: {head!r}")

    def send(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        self.sock.sendall(frame(opcode, payload, fin=fin))

    def send_text(self, text: str | bytes) -> None:
        self.send(OP_TEXT, text.encode() if isinstance(text, str) else text)

    def send_json(self, message: Any) -> None:
        self.send_text(json.dumps(message))

    def _read(self, count: int) -> bytes:
        while len(self._buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self._buffer += chunk
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def receive(self, timeout: float = 30) -> Frame:
        """The next data or close frame (pings are answered, pongs skipped)."""
        self.sock.settimeout(timeout)
        while True:
            first, second = self._read(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._read(8))
            payload = self._read(length)  # server frames are not masked
            opcode = first & 0x0F
            if opcode == OP_PING:
                self.send(OP_PONG, payload)
                continue
            if opcode == OP_PONG:
                continue
            return Frame(opcode, payload)

    def receive_json(self, timeout: float = 30) -> Any:
        received = self.receive(timeout)
        assert received.opcode == OP_TEXT, received
        return received.json()

    def close(self) -> None:
        self.sock.close()


def raw_prompt_request(request_id: str, prompt: str, max_tokens: int) -> Any:
    return {
        "Request": {
            "id": request_id,
            "request": {
                "ContinueFromRawPrompt": {
                    "raw_prompt": prompt,
                    "max_tokens": max_tokens,
                }
            },
        }
    }


def request_id_of(envelope: dict[str, Any]) -> str:
    """The request id of a socket envelope, a response or an error."""
    body = envelope.get("Response") or envelope["Error"]
    return str(body["request_id"])


def is_final(envelope: dict[str, Any]) -> bool:
    """Whether a socket envelope ends its request (an error, or not a token)."""
    if "Error" in envelope:
        return True
    return "ContentToken" not in envelope["Response"]["response"]["GeneratedToken"]
