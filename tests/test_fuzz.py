"""Property-based fuzzing of the JSON inputs: no crash, a named field, no 500.

Validation functions are fuzzed directly (thousands of cases, fast); the live
endpoints get a bounded number of cases each over real HTTP.  Every endpoint,
HTTP inference, OpenAI, the socket and management, also gets hostile bodies
(integers of thousands of digits, NaN, lone surrogates, inside otherwise
plausible requests) and hostile headers (bytes that are not ASCII where a
token goes): each must get a 4xx with a message, never a 5xx.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import websockets
from daphne.utils import INVALID_HEADER_VALUE_BYTES
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from balancer.desired_state import DesiredState, DesiredStateError
from inference.socket_messages import (
    ClientError,
    InvalidSocketMessage,
    SocketRequest,
    StopRespondingTo,
    parse_socket_message,
)
from inference.validation import (
    InvalidRequest,
    validate_conversation,
    validate_embedding_batch,
    validate_raw_prompt,
)
from tests.support.constants import AUTH
from tests.support.web import WebServer, socket_url

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


# ----------------------------------------------------------- hostile bodies


# The live cases are slow (a request each): a failure is reported as found.
NO_SHRINKING = [Phase.explicit, Phase.reuse, Phase.generate]


@dataclass(frozen=True)
class RawNumber:
    """A number literal Python's parser takes and JSON does not (``NaN``)."""

    text: str


@dataclass(frozen=True)
class Digits:
    """An integer literal of ``count`` digits: more than ``json.dumps`` (or
    ``int()``) writes past 4,300, so it goes into the text as it is."""

    count: int


# What Python's parser takes but nothing after it can use.
hostile_atoms = st.sampled_from(
    [Digits(5000), Digits(400), Digits(101), "\ud800", "a\udfffb", "\udbff"]
) | st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"]).map(RawNumber)


def render(value: Any) -> str:
    """``value`` as JSON text, hostile atoms written as they are."""
    if isinstance(value, Digits):
        return "9" * value.count
    if isinstance(value, RawNumber):
        return value.text
    if isinstance(value, dict):
        items = (f"{json.dumps(key)}: {render(item)}" for key, item in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(render(item) for item in value) + "]"
    return json.dumps(value)


def with_hostile_atom(shapes: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    """A body of the endpoint's shape with one hostile atom somewhere in it."""

    @st.composite
    def build(draw: st.DrawFn) -> str:
        body = draw(shapes)
        atom = draw(hostile_atoms)
        # Down a random path of the body to a leaf, or a new key.
        node = body
        while True:
            if isinstance(node, dict) and node and draw(st.booleans()):
                key = draw(st.sampled_from(sorted(node)))
                if isinstance(node[key], dict | list) and node[key]:
                    node = node[key]
                    continue
                node[key] = atom
                break
            if isinstance(node, list) and node and draw(st.booleans()):
                index = draw(st.integers(0, len(node) - 1))
                if isinstance(node[index], dict | list) and node[index]:
                    node = node[index]
                    continue
                node[index] = atom
                break
            if isinstance(node, dict):
                node[draw(st.sampled_from(["max_tokens", "x", "\ud800"]))] = atom
            elif isinstance(node, list):
                node.append(atom)
            else:
                return render(atom)
            break
        return render(body)

    return build()


messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant"]), "content": st.text()}
    ),
    min_size=1,
    max_size=3,
)
openai_chat_bodies = st.fixed_dictionaries(
    {"model": st.just("m"), "messages": messages},
    optional={
        "temperature": json_values,
        "max_tokens": json_values,
        "seed": json_values,
    },
)
openai_completion_bodies = st.fixed_dictionaries(
    {"model": st.just("m"), "prompt": st.text()},
    optional={"max_tokens": json_values, "top_p": json_values, "stop": json_values},
)
openai_embedding_bodies = st.fixed_dictionaries(
    {"model": st.just("m"), "input": st.lists(st.text(), min_size=1, max_size=3)}
)
valid_raw_prompt = st.fixed_dictionaries(
    {"raw_prompt": st.text(min_size=1), "max_tokens": st.integers(1, 10)}
)
valid_conversation = st.fixed_dictionaries(
    {"conversation_history": messages, "max_tokens": st.integers(1, 10)}
)
valid_embeddings = st.fixed_dictionaries(
    {
        "input_batch": st.lists(
            st.fixed_dictionaries({"id": st.text(), "content": st.text()}),
            min_size=1,
            max_size=2,
        ),
        "normalization_method": st.sampled_from(["L2", {"RmsNorm": {"epsilon": 1}}]),
    }
)

HOSTILE_BODY_ENDPOINTS = [
    ("POST", "/api/v1/continue_from_raw_prompt", valid_raw_prompt),
    ("POST", "/api/v1/continue_from_conversation_history", valid_conversation),
    ("POST", "/api/v1/generate_embedding_batch", valid_embeddings),
    ("POST", "/v1/chat/completions", openai_chat_bodies),
    ("POST", "/v1/completions", openai_completion_bodies),
    ("POST", "/v1/embeddings", openai_embedding_bodies),
    ("PUT", "/api/v1/balancer_desired_state", state_bodies),
]


def error_message(response: httpx.Response) -> str:
    """The message of an error response, in whichever API's shape."""
    error = response.json()["error"]
    if isinstance(error, str):
        return error  # the management API's
    return str(error.get("message") or error.get("description") or "")


@pytest.mark.parametrize(("method", "path", "shapes"), HOSTILE_BODY_ENDPOINTS)
def test_hostile_bodies_get_a_400_with_a_message_on_every_endpoint(
    web: WebServer, method: str, path: str, shapes: Any
) -> None:
    """Plausible requests with one integer of hundreds of digits, one NaN or
    one lone surrogate somewhere: each is refused with 400 before any slot is
    waited for (a request that went on would wait for one: there is no agent).
    """

    @settings(
        max_examples=25,
        deadline=None,
        phases=NO_SHRINKING,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(with_hostile_atom(shapes))
    def check(text: str) -> None:
        response = httpx.request(
            method,
            f"{web.url}{path}",
            content=text.encode(),
            headers={"Content-Type": "application/json", **AUTH},
            timeout=30,
        )
        assert response.status_code == 400, (text[:200], response.text[:500])
        assert error_message(response), response.text

    check()


# Bytes a header value can carry to our code (read as Latin-1), besides ASCII
# ones.  daphne itself refuses a few (RFC 9110's, with a 400 of its own).
header_bytes = (
    st.binary(min_size=1, max_size=40)
    .map(lambda raw: bytes(b if b >= 0x20 and b != 0x7F else 0x80 | b for b in raw))
    .filter(lambda raw: raw.strip() == raw and any(b >= 0x80 for b in raw))
    .filter(lambda raw: not INVALID_HEADER_VALUE_BYTES.intersection(raw))
)

MANAGEMENT_ROUTES = [
    ("GET", "/api/v1/agents"),
    ("GET", "/api/v1/agents/stream"),
    ("GET", "/api/v1/buffered_requests"),
    ("GET", "/api/v1/buffered_requests/stream"),
    ("GET", "/api/v1/balancer_desired_state"),
    ("PUT", "/api/v1/balancer_desired_state"),
    ("GET", "/api/v1/balancer_desired_state/revisions"),
    ("POST", "/api/v1/balancer_desired_state/revisions/1/roll_back"),
    ("GET", "/api/v1/balancer_applicable_state"),
    ("GET", "/api/v1/agent/some-agent/chat_template_override"),
    ("GET", "/api/v1/agent/some-agent/model_metadata"),
    ("GET", "/metrics"),
]


@pytest.mark.parametrize(("method", "path"), MANAGEMENT_ROUTES)
def test_management_routes_answer_401_to_any_token_bytes(
    web: WebServer, method: str, path: str
) -> None:
    """A bearer token with bytes outside ASCII is a wrong token, not a crash."""

    @settings(
        max_examples=10,
        deadline=None,
        phases=NO_SHRINKING,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(header_bytes)
    def check(token: bytes) -> None:
        response = httpx.request(
            method,
            f"{web.url}{path}",
            headers={b"Authorization": b"Bearer " + token},
            content=b"{}" if method != "GET" else None,
            timeout=30,
        )
        assert response.status_code == 401, (token, response.text[:300])
        assert "authentication required" in error_message(response)

    check()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/continue_from_raw_prompt"),
        ("POST", "/api/v1/continue_from_conversation_history"),
        ("POST", "/api/v1/generate_embedding_batch"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/models"),
    ],
)
def test_inference_routes_take_any_header_bytes_without_a_5xx(
    web: WebServer, method: str, path: str
) -> None:
    """Bytes outside ASCII in the token and in other headers: the open APIs
    answer the (invalid) body with 400, or list the models."""

    @settings(
        max_examples=10,
        deadline=None,
        phases=NO_SHRINKING,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(header_bytes, header_bytes)
    def check(token: bytes, other: bytes) -> None:
        response = httpx.request(
            method,
            f"{web.url}{path}",
            headers={
                b"Authorization": b"Bearer " + token,
                b"X-Whatever": other,
                b"User-Agent": other,
            },
            content=b"{}" if method == "POST" else None,
            timeout=30,
        )
        assert response.status_code == (400 if method == "POST" else 200), (
            token,
            response.text[:300],
        )

    check()


def socket_message_is_answered(text: str) -> bool:
    """Whether the server answers ``text`` at once: not a valid request (it
    would wait for a slot), a cancellation or a client's own error (no reply).
    """
    try:
        message = parse_socket_message(text)
    except InvalidSocketMessage:
        return True
    except Exception:
        return True  # what the server must answer, not crash on
    return not isinstance(message, SocketRequest | StopRespondingTo | ClientError)


socket_requests = st.builds(
    lambda request_id, params, variant: {
        "Request": {"id": request_id, "request": {variant: params}}
    },
    st.text(min_size=1, max_size=8),
    valid_raw_prompt | valid_conversation,
    st.sampled_from(["ContinueFromRawPrompt", "ContinueFromConversationHistory"]),
)


async def test_socket_answers_hostile_messages_with_an_error_envelope(
    web: WebServer,
) -> None:
    """Random JSON, and plausible requests with a hostile atom in them, all
    on one socket: every one that is not a valid request gets a 4xx ``Error``
    envelope with a description, and the socket stays open for the next."""
    texts = st.one_of(
        with_hostile_atom(socket_requests).map(lambda text: (text, True)),
        json_values.map(json.dumps).map(
            lambda text: (text, socket_message_is_answered(text))
        ),
    )
    pending: list[str] = []

    @settings(max_examples=60, deadline=None, phases=NO_SHRINKING)
    @given(texts)
    def collect(case: tuple[str, bool]) -> None:
        text, answered = case
        if answered:
            pending.append(text)

    collect()
    assert pending
    async with websockets.connect(socket_url(web)) as socket:
        for text in pending:
            await socket.send(text)
            error = json.loads(await asyncio.wait_for(socket.recv(), 30))["Error"]
            assert 400 <= error["error"]["code"] < 500, (text[:200], error)
            assert error["error"]["description"], error
