"""Channel-layer messages into engine jobs and output into Redis batches
(``agents.messages``): plain functions, no Redis, no model."""

from __future__ import annotations

from typing import Any, cast

from agents.jobs import EmbeddingJob, Generation, Output
from agents.messages import job_from_request, output_batches
from balancer.contract import Message, RequestKind, RequestParams, content_token_item
from balancer.events import InferenceRequestEvent

HISTORY: list[Message] = [{"role": "user", "content": "Hi"}]

# What the web tier's validation fills in when a client leaves it out.
DEFAULTS: dict[RequestKind, dict[str, Any]] = {
    "raw_prompt": {"max_tokens": 256, "grammar": None},
    "conversation": {
        "add_generation_prompt": True,
        "enable_thinking": False,
        "max_tokens": 256,
        "grammar": None,
        "tools": [],
    },
    "embeddings": {},
}


def message(kind: RequestKind, **params: Any) -> InferenceRequestEvent:
    # The contract's params, as validation builds them from a client's body.
    full = cast(RequestParams, {**DEFAULTS[kind], **params})
    return {
        "type": "inference.request",
        "request_id": "r",
        "reply_to": "inbox",
        "kind": kind,
        "params": full,
    }


def test_the_default_system_prompt_goes_first_but_routing_sees_the_original() -> None:
    job = job_from_request(
        message("conversation", conversation_history=HISTORY, max_tokens=5),
        system_prompt="Be brief.",
    )
    assert isinstance(job, Generation)
    assert job.conversation == [{"role": "system", "content": "Be brief."}, *HISTORY]
    assert job.original_conversation == HISTORY
    assert job.max_tokens == 5 and job.destination == "inbox"


def test_a_conversation_with_its_own_system_prompt_keeps_it() -> None:
    own = [{"role": "system", "content": "Be long."}, *HISTORY]
    job = job_from_request(
        message("conversation", conversation_history=own), system_prompt="Be brief."
    )
    assert isinstance(job, Generation) and job.conversation == own


def test_embeddings_become_an_embedding_job() -> None:
    job = job_from_request(
        message(
            "embeddings",
            input_batch=[{"id": "a", "content": "text"}],
            normalization_method="L2",
        ),
        system_prompt="",
    )
    assert job == EmbeddingJob(
        request_id="r",
        documents=[("a", "text")],
        normalization="L2",
        destination="inbox",
    )


def test_an_unusable_json_schema_ends_the_request_with_a_syntax_error() -> None:
    schema = {"type": "json_schema", "schema": '{"type": "nonsense"}'}
    refused = job_from_request(
        message("raw_prompt", raw_prompt="Hi", grammar=schema), system_prompt=""
    )
    assert isinstance(refused, Output) and refused.final
    assert isinstance(refused.response, dict)
    assert "GeneratedToken" in refused.response
    assert "GrammarSyntaxError" in refused.response["GeneratedToken"]


def test_lost_requests_end_with_502_and_their_later_output_is_dropped() -> None:
    outputs = [
        Output("inbox", content_token_item("lost", "x")),
        Output("other", content_token_item("kept", "y")),
    ]
    batches = output_batches(
        outputs, agent_id="id", agent_name="name", lost={"lost": "inbox"}
    )
    (lost,) = batches["inbox"]["items"]
    assert isinstance(lost, dict) and lost["error"] is not None
    assert lost["error"]["code"] == 502 and lost["final"]
    # A plain content token travels compact, as [request_id, text].
    assert batches["other"]["items"] == [["kept", "y"]]
    assert batches["other"]["agent_name"] == "name"


def test_a_conversation_keeps_its_template_flags_tools_and_sampling() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    job = job_from_request(
        message(
            "conversation",
            conversation_history=HISTORY,
            add_generation_prompt=False,
            enable_thinking=True,
            tools=[tool],
            stop=["x"],
            temperature=0.5,
        ),
        system_prompt="",
    )
    assert isinstance(job, Generation) and job.kind == "conversation"
    assert not job.add_generation_prompt and job.enable_thinking
    assert job.tools == [tool] and job.stop == ["x"] and job.temperature == 0.5
    assert job.top_p is None and job.seed is None


def test_a_raw_prompt_without_overrides_leaves_sampling_to_the_desired_state() -> None:
    job = job_from_request(message("raw_prompt", raw_prompt="Hi"), system_prompt="")
    assert isinstance(job, Generation) and job.kind == "raw_prompt"
    assert job.prefix_params() == {"raw_prompt": "Hi"}
    assert job.temperature is None and job.stop == [] and job.grammar is None
