"""What can be checked of the deployment without Docker running here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, WebServer

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
