"""Agents, and whole stacks of Redis, web servers and agents started together."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from balancer import keys
from tests.support.constants import ROOT
from tests.support.processes import service_env, stop_process
from tests.support.redis_server import RedisServer, start_redis
from tests.support.web import WebServer, start_web


@dataclass
class Agent:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.process, sig)


def start_agent(
    redis_url: str,
    tmp_path: Path,
    name: str,
    slots: int = 2,
    *args: str,
    env: dict[str, str] | None = None,
) -> Agent:
    log = tmp_path / f"agent-{name}.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "run_agent",
            "--name",
            name,
            "--slots",
            str(slots),
            *args,
        ],
        cwd=ROOT,
        env=service_env(redis_url, **(env or {})),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    return Agent(name, process, log)


class Fleet:
    """A Redis, web servers and agents, all stopped at the end."""

    def __init__(self, tmp_path: Path, state: dict[str, Any]) -> None:
        self.tmp_path = tmp_path
        self.state = state
        self.redis: RedisServer = start_redis()
        self.webs: list[WebServer] = []
        self.agents: list[Agent] = []

    def web(self, **env: str) -> WebServer:
        server = start_web(self.redis.url, self.tmp_path, **env)
        if not self.webs:
            server.put_desired_state(self.state)
        self.webs.append(server)
        return server

    def agent(
        self, name: str, slots: int = 2, *args: str, env: dict[str, str] | None = None
    ) -> Agent:
        agent = start_agent(self.redis.url, self.tmp_path, name, slots, *args, env=env)
        self.agents.append(agent)
        return agent

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.redis.port)

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop(signal.SIGKILL)
        for server in self.webs:
            server.stop()
        stop_process(self.redis.process)


def request_log(fleet: Fleet) -> list[dict[str, Any]]:
    client = fleet.client()
    records = [json.loads(raw) for raw in client.lrange(keys.request_log(), 0, -1)]
    client.close()
    return records


@contextmanager
def running_platform(
    tmp_path: Path,
    state: dict[str, Any],
    *,
    agent_name: str,
    slots: int = 2,
    redis_server: RedisServer | None = None,
    agent_args: tuple[str, ...] = (),
    **web_env: str,
) -> Iterator[WebServer]:
    """Daphne and one agent serving ``state``, on a Redis of their own unless
    ``redis_server`` is given (and then left running); ``agent_args`` go to
    ``run_agent``."""
    own_redis = redis_server is None
    redis_server = redis_server or start_redis()
    web = start_web(redis_server.url, tmp_path, **web_env)
    agent: Agent | None = None
    try:
        web.put_desired_state(state)
        agent = start_agent(redis_server.url, tmp_path, agent_name, slots, *agent_args)
        try:
            web.wait_for_ready_agents(1)
        except TimeoutError:
            raise RuntimeError(agent.log.read_text()[-3000:]) from None
        yield web
    finally:
        if agent is not None:
            agent.stop()
        web.stop()
        if own_redis:
            stop_process(redis_server.process)
