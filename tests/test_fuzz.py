"""Property-based fuzzing of the JSON inputs: no crash, a named field, no 500.

Validation functions are fuzzed directly (thousands of cases, fast); the live
endpoints get a bounded number of cases each over real HTTP.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balancer.desired_state import DesiredState, DesiredStateError
from inference.validation import (
    InvalidRequest,
    validate_conversation,
    validate_embedding_batch,
    validate_raw_prompt,
)
from tests.conftest import AUTH, WebServer

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)

# Bodies near the real shapes find more than random JSON alone.
raw_prompt_bodies = st.fixed_dictionaries(
    {},
    optional={
        "raw_prompt": json_values,
        "max_tokens": json_values,
        "grammar": json_values,
        "unexpected": json_values,
    },
)
conversation_bodies = st.fixed_dictionaries(
    {},
    optional={
        "conversation_history": st.lists(
            st.fixed_dictionaries(
                {}, optional={"role": json_values, "content": json_values}
            ),
            max_size=3,
        )
        | json_values,
        "max_tokens": json_values,
        "add_generation_prompt": json_values,
        "tools": json_values,
    },
)
state_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": json_values,
        "inference_parameters": st.dictionaries(
            st.sampled_from(
                [
                    "n_batch",
                    "context_size",
                    "top_p",
                    "temperature",
                    "k_cache_dtype",
                    "pooling_type",
                    "enable_embeddings",
                    "unknown",
                ]
            ),
            json_values,
            max_size=4,
        ),
        "chat_template_override": json_values,
        "use_chat_template_override": json_values,
    },
)


@settings(max_examples=500, deadline=None)
@given(raw_prompt_bodies | json_values)
def test_raw_prompt_validation_accepts_or_names_a_field(body: Any) -> None:
    try:
        validate_raw_prompt(body)
    except InvalidRequest as error:
        assert error.field


@settings(max_examples=500, deadline=None)
@given(conversation_bodies | json_values)
def test_conversation_validation_accepts_or_names_a_field(body: Any) -> None:
    try:
        validate_conversation(body)
    except InvalidRequest as error:
        assert error.field


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_embedding_validation_accepts_or_names_a_field(body: Any) -> None:
    try:
        validate_embedding_batch(body)
    except InvalidRequest as error:
        assert error.field


@settings(max_examples=500, deadline=None)
@given(state_bodies | json_values)
def test_desired_state_parsing_accepts_or_names_a_field(body: Any) -> None:
    try:
        state = DesiredState.from_json(body)
    except DesiredStateError as error:
        assert error.field
    else:
        assert DesiredState.from_json(state.to_json()) == state


@pytest.mark.parametrize(
    ("path", "bodies"),
    [
        ("/api/v1/continue_from_raw_prompt", raw_prompt_bodies),
        ("/api/v1/continue_from_conversation_history", conversation_bodies),
        ("/api/v1/generate_embedding_batch", json_values),
        ("/api/v1/balancer_desired_state", state_bodies),
    ],
)
def test_live_endpoints_never_answer_500(
    web: WebServer, path: str, bodies: Any
) -> None:
    method = "PUT" if path.endswith("desired_state") else "POST"
    seen: set[int] = set()

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(bodies)
    def check(body: Any) -> None:
        # Only bodies that fail validation: a valid one would wait for a slot.
        try:
            if method == "PUT":
                DesiredState.from_json(body)
            elif path.endswith("raw_prompt"):
                validate_raw_prompt(body)
            elif path.endswith("history"):
                validate_conversation(body)
            else:
                validate_embedding_batch(body)
            return
        except (InvalidRequest, DesiredStateError):
            pass
        response = httpx.request(method, f"{web.url}{path}", json=body, headers=AUTH)
        seen.add(response.status_code)
        assert response.status_code == 400, response.text

    check()
    assert seen == {400}


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xfe not utf-8", b"[" * 100_000 + b"]" * 100_000, b"", b"null", b"1e999"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/continue_from_raw_prompt"),
        ("POST", "/api/v1/generate_embedding_batch"),
        ("PUT", "/api/v1/balancer_desired_state"),
    ],
)
def test_hostile_bodies_get_400_not_500(
    web: WebServer, payload: bytes, method: str, path: str
) -> None:
    response = httpx.request(
        method,
        f"{web.url}{path}",
        content=payload,
        headers={"Content-Type": "application/json", **AUTH},
    )
    assert response.status_code == 400


def test_oversized_body_gets_413(web: WebServer) -> None:
    response = httpx.post(
        f"{web.url}/api/v1/continue_from_raw_prompt",
        content=b'{"raw_prompt": "' + b"a" * (5 * 1024 * 1024) + b'", "max_tokens": 1}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413
