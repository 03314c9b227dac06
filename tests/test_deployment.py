"""What can be checked of the deployment without Docker running here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.constants import ROOT
from tests.support.processes import free_port, service_env, stop_process, wait_until
from tests.support.redis_server import RedisServer
from tests.support.web import WebServer

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
SETTINGS_SOURCE = (ROOT / "paddler_project" / "settings.py").read_text()


def test_compose_has_the_whole_platform() -> None:
    assert {
        "redis",
        "postgres",
        "web-1",
        "web-2",
        "proxy",
        "agent",
        "agent-gpu",
    } <= set(SERVICES)
    assert SERVICES["agent-gpu"]["profiles"] == ["gpu"]
    assert SERVICES["agent-gpu"]["build"]["args"]["CMAKE_ARGS"] == "-DGGML_CUDA=on"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_long_running_services_restart_and_report_health(name: str) -> None:
    service = SERVICES[name]
    if name == "migrate":
        assert service["restart"] == "no"
        return
    assert service["restart"] == "unless-stopped"
    if name != "proxy":
        assert "healthcheck" in service


def test_compose_names_only_files_that_exist() -> None:
    for name, service in SERVICES.items():
        build = service.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build["context"]
            assert (ROOT / context / "Dockerfile").exists(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source}"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG CMAKE_ARGS" in dockerfile
    assert "ARG BASE_IMAGE" in dockerfile
    assert "requirements.txt" in dockerfile


def test_service_commands_are_real_entry_points() -> None:
    import django

    django.setup()
    from django.core.management import get_commands

    commands = get_commands()
    for name, service in SERVICES.items():
        command = service.get("command")
        if not isinstance(command, list):
            continue
        if command[:2] == ["python", "manage.py"]:
            assert command[2] in commands, name
        if command[0] == "daphne":
            module, _, attribute = command[-1].partition(":")
            assert module == "paddler_project.asgi" and attribute == "application"
        health = service.get("healthcheck", {}).get("test", [])
        if "manage.py" in health:
            assert health[health.index("manage.py") + 1] in commands, name


def test_compose_passes_only_settings_the_code_reads() -> None:
    environment = COMPOSE["x-paddler"]["environment"]
    for variable in environment:
        if variable.startswith("PADDLER_"):
            assert f'"{variable}"' in SETTINGS_SOURCE, variable
    assert {"REDIS_URL", "DATABASE_URL"} <= set(environment)


def test_proxy_spreads_over_both_replicas_and_streams_unbuffered() -> None:
    config = (ROOT / "deploy" / "nginx.conf").read_text()
    assert re.findall(r"server (web-\d):8000", config) == ["web-1", "web-2"]
    assert "proxy_buffering off" in config
    assert "Upgrade $http_upgrade" in config  # the WebSocket API


def production_env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PADDLER_SECRET_KEY": "x" * 20
        + "production-secret-key-that-is-long-enough-0123",
        "PADDLER_SECURE_COOKIES": "true",
        "PADDLER_SSL_REDIRECT": "true",
        "PADDLER_HSTS_SECONDS": "31536000",
        "PADDLER_BEHIND_TLS_PROXY": "true",
        "PADDLER_ALLOWED_HOSTS": "paddler.example.com",
        **extra,
    }


def test_deploy_checks_pass_under_production_settings() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=production_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_logs_are_json_lines_when_asked() -> None:
    code = (
        "import django, logging; django.setup(); "
        "logging.getLogger('paddler.test').warning('hello %s', 'there')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=production_env(
            PADDLER_LOG_FORMAT="json", DJANGO_SETTINGS_MODULE="paddler_project.settings"
        ),
        capture_output=True,
        text=True,
        check=True,
    )
    entry = json.loads(result.stderr.strip().splitlines()[-1])
    assert entry["message"] == "hello there"
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "paddler.test"


def test_agent_health_command_finds_live_agents_only(platform: WebServer) -> None:
    def health(name: str) -> int:
        return subprocess.run(
            [sys.executable, "manage.py", "agent_health", "--name", name],
            cwd=ROOT,
            env=platform.env,
            capture_output=True,
            check=False,
        ).returncode

    assert health("agent-one") == 0
    assert health("no-such-agent") != 0


SECRET_KEY_WARNING = "logins will not survive a restart and will not work on a second"


def entrypoint(*command: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The image's entry point, run here as the image runs it."""
    base = {k: v for k, v in os.environ.items() if k != "PADDLER_SECRET_KEY"}
    # The image's python is its virtualenv's; here, the one running the tests.
    base["PATH"] = f"{Path(sys.executable).parent}:{base.get('PATH', '')}"
    return subprocess.run(
        [str(ROOT / "deploy" / "entrypoint.sh"), *command],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_image_refuses_to_start_the_web_tier_without_a_secret_key() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    entry = re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.MULTILINE)
    assert entry is not None
    assert json.loads(entry.group(1)) == ["/app/deploy/entrypoint.sh"]
    assert "WORKDIR /app" in dockerfile
    command = json.loads(
        re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE).group(1)  # type: ignore[union-attr]
    )
    assert command[0] == "daphne"
    # The image's own command, and the compose's web and migration commands.
    for args in (command, SERVICES["web-1"]["command"], SERVICES["migrate"]["command"]):
        refused = entrypoint(*args)
        assert refused.returncode == 64, refused.stdout + refused.stderr
        assert "refusing to start: set PADDLER_SECRET_KEY" in refused.stderr
        refused = entrypoint(*args, PADDLER_SECRET_KEY="")
        assert refused.returncode == 64
    started = entrypoint("python", "-c", "print('started')", PADDLER_SECRET_KEY="k")
    assert (started.returncode, started.stdout) == (0, "started\n")


def test_image_starts_agents_without_the_secret_key() -> None:
    # Agents sign nothing: a GPU host need not hold the web tier's secret.
    for name in ("agent", "agent-gpu"):
        assert SERVICES[name]["command"][:3] == ["python", "manage.py", "run_agent"]
    started = entrypoint("python", "manage.py", "agent_health", "--help")
    assert started.returncode == 0, started.stderr
    assert "usage:" in started.stdout


def test_compose_refuses_to_start_without_a_secret_key() -> None:
    for name, service in SERVICES.items():
        if service.get("image", "").startswith("paddler"):
            assert (
                service["environment"]["PADDLER_SECRET_KEY"]
                == "${PADDLER_SECRET_KEY:?set PADDLER_SECRET_KEY}"
            ), name


def test_web_replicas_count_logins_per_client_behind_the_proxy() -> None:
    # The proxy replaces X-Forwarded-For with the client's address (appending
    # would let a client choose the first one), and daphne reads it.
    for name in ("web-1", "web-2"):
        assert "--proxy-headers" in SERVICES[name]["command"], name
    config = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in config
    assert "$proxy_add_x_forwarded_for" not in config


def test_web_tier_says_at_start_that_logins_need_a_secret_key(
    redis_server: RedisServer, tmp_path: Path, web: WebServer
) -> None:
    port = free_port()
    env = service_env(
        redis_server.url, DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}"
    )
    del env["PADDLER_SECRET_KEY"]
    log = tmp_path / "daphne.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daphne",
            "-p",
            str(port),
            "paddler_project.asgi:application",
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(
            lambda: (
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).text == "OK"
            ),
            30,
            "daphne",
        )
    finally:
        stop_process(process)
    warnings = [line for line in log.read_text().splitlines() if "WARNING" in line]
    assert [line for line in warnings if SECRET_KEY_WARNING in line] != [], warnings
    assert log.read_text().count("PADDLER_SECRET_KEY is not set") == 1
    # With a key (as every test server has one), no word of it.
    assert "PADDLER_SECRET_KEY is not set" not in web.log.read_text()


def test_commands_and_agents_say_nothing_of_the_secret_key() -> None:
    # They read the settings too, but sign no session.
    env = {k: v for k, v in os.environ.items() if k != "PADDLER_SECRET_KEY"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "PADDLER_SECRET_KEY" not in result.stdout + result.stderr
