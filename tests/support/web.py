"""The web tier as the tests run it: daphne on a free port, on a fresh database."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.constants import AUTH, ROOT
from tests.support.databases import drop_web_database, web_database
from tests.support.processes import free_port, service_env, stop_process, wait_until


@dataclass
class WebServer:
    url: str
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    log: Path

    def stop(self) -> None:
        stop_process(self.process)
        drop_web_database(self.env["DATABASE_URL"])

    def put_desired_state(self, state: dict[str, Any]) -> None:
        response = httpx.put(
            f"{self.url}/api/v1/balancer_desired_state",
            json=state,
            headers=AUTH,
            timeout=10,
        )
        assert response.status_code == 204, response.text

    def agents(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/agents", headers=AUTH, timeout=10)
        response.raise_for_status()
        agents: list[dict[str, Any]] = response.json()["agents"]
        return agents

    def wait_for_ready_agents(self, count: int, timeout: float = 60) -> None:
        def ready() -> bool:
            agents = self.agents()
            return (
                sum(
                    1
                    for a in agents
                    if a["state_application_status"] == "Applied"
                    and a["slots_total"] > 0
                )
                >= count
            )

        wait_until(ready, timeout, f"{count} ready agent(s)")


def start_web(redis_url: str, tmp_path: Path, **extra_env: str) -> WebServer:
    port = free_port()
    env = service_env(redis_url, DATABASE_URL=web_database(tmp_path, port), **extra_env)
    log = tmp_path / f"daphne-{port}.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "paddler_project.asgi:application",
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"daphne exited: {log.read_text()[-2000:]}")
        return httpx.get(f"{url}/health", timeout=1).text == "OK"

    wait_until(healthy, 30, "daphne")
    return WebServer(url, process, env, log)


def socket_url(web: WebServer, query: str = "") -> str:
    url = web.url.replace("http://", "ws://", 1) + "/api/v1/inference_socket"
    return f"{url}?{query}" if query else url


def manage(web: WebServer, *args: str) -> str:
    """Run ``manage.py`` against ``web``'s database."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=web.env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.stdout
