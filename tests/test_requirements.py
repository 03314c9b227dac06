"""The runtime's requirements hold what the platform runs on, and only that;
tests, lint and type checks come from requirements-dev.txt, which the Docker
image does not install."""

from __future__ import annotations

import re
from importlib.metadata import packages_distributions

from tests.support.constants import ROOT

DEV_TOOLS = {
    "pytest",
    "pytest-django",
    "pytest-asyncio",
    "pytest-timeout",
    "hypothesis",
    "playwright",
    "websockets",
    "PyYAML",
    "types-PyYAML",
    "paddler-client",
    "openai",
    # Writes the test multimodal projection (tests/support/mmproj.py).
    "gguf",
    "ruff",
    "mypy",
    "django-stubs",
    "djangorestframework-stubs",
}
# Runtime packages that no source file names, and why they are needed.
NAMED_NOWHERE = {
    "psycopg": "Django's PostgreSQL backend loads it for a postgres:// DATABASE_URL",
}
SOURCES = ("balancer", "inference", "agents", "paddler_project", "scripts", "deploy")


def requirements(name: str) -> list[str]:
    names = []
    for line in (ROOT / name).read_text().splitlines():
        wanted = line.split("#")[0].strip()
        if wanted and not wanted.startswith("-r"):
            names.append(re.split(r"[\[=<>]", wanted)[0])
    return names


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_runtime_holds_no_development_tool() -> None:
    runtime = {normalized(name) for name in requirements("requirements.txt")}
    assert runtime & {normalized(name) for name in DEV_TOOLS} == set()
    development = (ROOT / "requirements-dev.txt").read_text()
    assert "-r requirements.txt" in development.splitlines()
    assert {normalized(n) for n in requirements("requirements-dev.txt")} == {
        normalized(name) for name in DEV_TOOLS
    }


def test_the_image_installs_the_runtime_only() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir -r requirements.txt" in dockerfile
    assert "requirements-dev" not in dockerfile
    assert "-r requirements-dev.txt" in (ROOT / "scripts" / "setup.sh").read_text()


def test_every_runtime_package_is_used() -> None:
    modules: dict[str, list[str]] = {}
    for module, distributions in packages_distributions().items():
        for distribution in distributions:
            modules.setdefault(normalized(distribution), []).append(module)
    text = (
        "\n".join(
            path.read_text()
            for source in SOURCES
            for path in (ROOT / source).rglob("*")
            if path.is_file() and path.suffix in (".py", ".sh", "")
        )
        + (ROOT / "Dockerfile").read_text()
    )
    unused = []
    for name in requirements("requirements.txt"):
        if normalized(name) in NAMED_NOWHERE:
            continue
        names = modules.get(normalized(name), [])
        assert names, f"{name} is not installed"
        if not any(re.search(rf"\b{re.escape(m)}\b", text) for m in names):
            unused.append(name)
    assert unused == []
