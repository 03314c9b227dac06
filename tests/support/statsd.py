"""A StatsD server: the lines a web tier sends, on a real UDP socket."""

from __future__ import annotations

import socket
import threading
import time


class StatsdListener:
    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.lines: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        host, port = self.socket.getsockname()
        return f"{host}:{port}"

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.socket.recv(65536)
            except TimeoutError:
                continue
            now = time.monotonic()
            self.lines += [(now, line) for line in data.decode().splitlines()]

    def latest(self, name: str) -> str | None:
        for _, line in reversed(self.lines):
            if line.startswith(f"{name}:"):
                return line.split(":", 1)[1]
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.socket.close()
