"""Paths, credentials and settings shared by the tests and the benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
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

# A raw prompt the demo model keeps continuing for hundreds of tokens: for
# tests that cancel a request while it is still generating.
ENDLESS_PROMPT = "Count to one thousand: 1, 2, 3, 4, 5, 6, 7, 8,"

# Every management endpoint: method, path ({agent} is a live agent's id).
MANAGEMENT_ENDPOINTS = [
    ("GET", "/api/v1/agents"),
    ("GET", "/api/v1/agents/stream"),
    ("GET", "/api/v1/buffered_requests"),
    ("GET", "/api/v1/buffered_requests/stream"),
    ("GET", "/api/v1/balancer_desired_state"),
    ("PUT", "/api/v1/balancer_desired_state"),
    ("GET", "/api/v1/balancer_applicable_state"),
    ("GET", "/api/v1/agent/{agent}/chat_template_override"),
    ("GET", "/api/v1/agent/{agent}/model_metadata"),
    ("GET", "/api/v1/balancer_desired_state/revisions"),
    ("POST", "/api/v1/balancer_desired_state/revisions/{revision}/roll_back"),
    ("GET", "/metrics"),
]
