"""A Redis master, a replica of it and a Redis Sentinel watching them, all
real processes on loopback, for the failover tests."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from tests.support.processes import free_port, stop_process, wait_until
from tests.support.redis_server import RedisServer, start_redis

MASTER_NAME = "paddler"


@dataclass
class SentinelSet:
    master: RedisServer
    replica: RedisServer
    sentinel_port: int
    sentinel: subprocess.Popen[bytes]

    @property
    def sentinels(self) -> str:
        """``PADDLER_REDIS_SENTINELS`` for this set."""
        return f"127.0.0.1:{self.sentinel_port}"

    def env(self) -> dict[str, str]:
        """The settings of a web process or agent that finds Redis through
        the sentinel (``REDIS_URL`` gives the database number only)."""
        return {
            "PADDLER_REDIS_SENTINELS": self.sentinels,
            "PADDLER_REDIS_SENTINEL_MASTER": MASTER_NAME,
        }

    def master_port(self) -> int:
        client = redis.Redis(port=self.sentinel_port, socket_timeout=2)
        try:
            address: Any = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        finally:
            client.close()
        return int(address[1])

    def stop(self) -> None:
        stop_process(self.sentinel)
        stop_process(self.replica.process)
        stop_process(self.master.process)


def start_replica(master: RedisServer, directory: Path) -> RedisServer:
    """A replica of ``master``; it writes the copy it receives in
    ``directory``, not in the working directory."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (scripts/setup.sh installs it)"
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            *("--port", str(port), "--bind", "127.0.0.1", "--save", ""),
            *("--appendonly", "no", "--replicaof", "127.0.0.1", str(master.port)),
            *("--dir", str(directory)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)

    def in_sync() -> bool:
        return client.info("replication").get("master_link_status") == "up"

    wait_until(in_sync, 15, "the replica to sync")
    client.close()
    return RedisServer(port, process)


def start_sentinel_set(tmp_path: Path) -> SentinelSet:
    """Master, replica and one sentinel (quorum 1) that fails over one second
    after the master stops answering.  ``redis-server --sentinel`` is the
    sentinel Debian's ``redis-sentinel`` package starts."""
    master = start_redis()
    replica = start_replica(master, tmp_path)
    port = free_port()
    config = tmp_path / "sentinel.conf"
    # Sentinel rewrites its configuration as it learns: a file of its own.
    config.write_text(
        f"port {port}\n"
        "bind 127.0.0.1\n"
        f"dir {tmp_path}\n"
        f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master.port} 1\n"
        f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
        f"sentinel failover-timeout {MASTER_NAME} 10000\n"
        f"sentinel parallel-syncs {MASTER_NAME} 1\n"
    )
    binary = shutil.which("redis-server")
    assert binary
    sentinel = subprocess.Popen(
        [binary, str(config), "--sentinel"],
        stdout=(tmp_path / "sentinel.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    client = redis.Redis(port=port, socket_timeout=2)

    def watching() -> bool:
        # The sentinel must know the replica, or it has nothing to promote.
        return bool(client.sentinel_slaves(MASTER_NAME))

    wait_until(watching, 30, "the sentinel to find the replica")
    client.close()
    return SentinelSet(master, replica, port, sentinel)
