"""A real ``redis-server`` on a free loopback port, without persistence."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

import redis

from tests.support.processes import free_port, wait_until


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def channel_layers(url: str, prefix: str, **config: Any) -> dict[str, Any]:
    """``CHANNEL_LAYERS`` for a channel layer on the Redis at ``url``, its
    keys under ``prefix``, with any other option of channels_redis's."""
    return {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [url], "prefix": prefix, **config},
        }
    }


def start_redis(port: int | None = None) -> RedisServer:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (scripts/setup.sh installs it)"
    port = port or free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    wait_until(client.ping, 10, "redis-server")
    client.close()
    return RedisServer(port, process)
