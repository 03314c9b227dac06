"""The desired state's bounds, through the real management API."""

from __future__ import annotations

import httpx
import pytest

from tests.support.constants import AUTH
from tests.support.web import WebServer


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("n_batch", 2**31, "must be between 1 and 65536"),
        ("context_size", 2**31, "must be between 1 and 1048576"),
        ("top_k", 2**31 - 1, "must be between 0 and 1000000 (0: off)"),
        ("penalty_last_n", 2**31 - 1, "must be between -1 and 1048576"),
        ("temperature", 1e300, "must be between 0 and 100"),
    ],
)
def test_management_api_refuses_numbers_beyond_their_bound(
    quiet_web: WebServer, name: str, value: float, message: str
) -> None:
    url = f"{quiet_web.url}/api/v1/balancer_desired_state"
    before = httpx.get(url, headers=AUTH, timeout=10).json()
    response = httpx.put(
        url,
        json={"inference_parameters": {name: value}},
        headers=AUTH,
        timeout=10,
    )
    assert response.status_code == 400
    field = f"inference_parameters.{name}"
    assert response.json()["field"] == field
    assert response.json()["error"].startswith(f"{field}: {message}")
    # Nothing was stored.
    assert httpx.get(url, headers=AUTH, timeout=10).json() == before


def test_management_api_accepts_the_largest_context(quiet_web: WebServer) -> None:
    quiet_web.put_desired_state(
        {"inference_parameters": {"context_size": 1_048_576, "n_batch": 65_536}}
    )
    state = httpx.get(
        f"{quiet_web.url}/api/v1/balancer_desired_state", headers=AUTH, timeout=10
    ).json()
    assert state["inference_parameters"]["context_size"] == 1_048_576
    assert state["inference_parameters"]["n_batch"] == 65_536
