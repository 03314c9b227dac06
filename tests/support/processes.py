"""Starting, awaiting and stopping the processes the tests run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from tests.support.constants import MANAGEMENT_TOKEN, ROOT


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


def service_env(redis_url: str, **extra: str) -> dict[str, str]:
    """The environment a web server or agent of ours runs with."""
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


def web_process_prints(code: str, redis_url: str) -> str:
    """What ``code`` prints in a Python process of its own, set up as a web
    process of ours is (for checks that would change the test process, such
    as loading the ASGI application)."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=service_env(redis_url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()
