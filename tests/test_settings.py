"""A bad setting fails at start, with a message that names the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.constants import ROOT


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PADDLER_MAX_BUFFERED_REQUESTS", "lots"),
        ("PADDLER_MAX_BUFFERED_REQUESTS", "-1"),
        ("PADDLER_BUFFERED_REQUEST_TIMEOUT_MS", "0"),
        ("PADDLER_INFERENCE_ITEM_TIMEOUT_MS", "1.5"),
        ("PADDLER_DEBUG", "maybe"),
        ("PADDLER_SSE_KEEPALIVE_MS", "0"),
        ("PADDLER_EMBEDDING_CHUNK_SIZE", "0"),
        ("PADDLER_MAX_CLIENT_BUFFER_BYTES", "1024"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
    ],
)
def test_bad_setting_stops_the_start_naming_the_variable(
    variable: str, value: str
) -> None:
    env = {**os.environ, variable: value}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert variable in result.stderr
