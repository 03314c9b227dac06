"""Translation between the web tier's messages and the engine's jobs.

Inbound: an ``inference.request`` message of the channel layer becomes a job
(or, when it cannot be one, the request's last output item).  Outbound: the
engine's output items become one ``OutputBatch`` per web process inbox, the
Redis list its stream reads.  No I/O here: the worker does the sending.
"""

from __future__ import annotations

from collections.abc import Mapping

from agents.jobs import EmbeddingJob, Generation, Output
from balancer.contract import (
    ConversationParams,
    Grammar,
    OutputItem,
    RawPromptParams,
    error_item,
    generation_failed_item,
)
from balancer.events import (
    CompactToken,
    InferenceRequestEvent,
    OutputBatch,
    compact_item,
)
from balancer.grammar_limits import GrammarTooComplex, check_gbnf


def grammar_to_gbnf(grammar: Grammar) -> tuple[str, str]:
    """(GBNF text, root rule) for a request's grammar; ValueError if malformed,
    ``GrammarTooComplex`` (a ValueError) past a limit of ``grammar_limits``."""
    if grammar["type"] == "json_schema":
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        from balancer.grammar_limits import check_json_schema_text

        # The converter recurses over the schema: bound it first.
        check_json_schema_text(grammar["schema"])
        try:
            text = json_schema_to_gbnf(grammar["schema"])
        except Exception as error:  # the converter raises many kinds
            raise ValueError(f"the JSON schema cannot be used: {error}") from None
        check_gbnf(text)
        return text, "root"
    check_gbnf(grammar["grammar"])
    return grammar["grammar"], grammar["root"]


def refusal(request_id: str, reply_to: str, code: int, description: str) -> Output:
    """The only output item of a request the agent does not take."""
    return Output(reply_to, error_item(request_id, code, description))


def job_from_request(
    message: InferenceRequestEvent, *, system_prompt: str
) -> Generation | EmbeddingJob | Output:
    """The job an ``inference.request`` message asks for, or, for a request
    whose grammar cannot be used, its one and last output item.

    ``system_prompt`` (the desired state's default) goes first in a
    conversation that has no system message of its own.
    """
    request_id = message["request_id"]
    reply_to = message["reply_to"]
    params = message["params"]
    # The params are the contract's, built and validated by the web tier: the
    # kinds' TypedDicts are final, so the keys they hold tell them apart.
    if "input_batch" in params:
        return EmbeddingJob(
            request_id=request_id,
            destination=reply_to,
            documents=[(d["id"], d["content"]) for d in params["input_batch"]],
            normalization=params["normalization_method"],
        )
    job = Generation(
        request_id=request_id,
        destination=reply_to,
        max_tokens=params["max_tokens"],
        # Sampling overrides are optional: None leaves the desired state's.
        temperature=params.get("temperature"),
        top_p=params.get("top_p"),
        seed=params.get("seed"),
        stop=params.get("stop", []),
    )
    grammar = params["grammar"]
    if grammar is not None:
        try:
            job.grammar, job.grammar_root = grammar_to_gbnf(grammar)
        except GrammarTooComplex as error:
            # The web tier checks this too; the agent does not rely on it.
            return refusal(request_id, reply_to, 400, f"grammar: {error}")
        except ValueError as error:
            return Output(
                reply_to,
                generation_failed_item(request_id, "GrammarSyntaxError", str(error)),
            )
    if "raw_prompt" in params:
        return _raw_prompt_job(job, params)
    constrained = grammar is not None or (
        params["tools"] and params.get("tool_choice", "auto") != "auto"
    )
    if constrained and params["enable_thinking"]:
        # Paddler's rule: a grammar would constrain the thinking too.
        return Output(
            reply_to,
            generation_failed_item(
                request_id,
                "GrammarIncompatibleWithThinking",
                "a grammar (or a required tool call) cannot be used "
                "with enable_thinking; turn thinking off",
            ),
        )
    return _conversation_job(job, params, system_prompt=system_prompt)


def _raw_prompt_job(job: Generation, params: RawPromptParams) -> Generation:
    job.raw_prompt = params["raw_prompt"]
    return job


def _conversation_job(
    job: Generation, params: ConversationParams, *, system_prompt: str
) -> Generation:
    job.original_conversation = params["conversation_history"]
    history = list(params["conversation_history"])
    if system_prompt and not any(m.get("role") == "system" for m in history):
        history.insert(0, {"role": "system", "content": system_prompt})
    job.conversation = history
    job.add_generation_prompt = params["add_generation_prompt"]
    job.enable_thinking = params["enable_thinking"]
    # An empty list renders as no tools at all.
    job.tools = params["tools"] or None
    job.chat_template_kwargs = params.get("chat_template_kwargs", {})
    job.tool_choice = params.get("tool_choice", "auto")
    job.parse_tool_calls = params.get("parse_tool_calls", True)
    return job


def output_batches(
    outputs: list[Output],
    *,
    agent_id: str,
    agent_name: str,
    lost: Mapping[str, str],
) -> dict[str, OutputBatch]:
    """The batch to push to each destination inbox, by inbox.

    ``lost`` (request id -> inbox) are requests whose earlier output Redis did
    not take: they end with an error instead of going on with a gap in their
    text, and any later output of theirs is dropped.
    """
    by_destination: dict[str, list[OutputItem | CompactToken]] = {}
    for request_id, destination in lost.items():
        by_destination.setdefault(destination, []).append(
            error_item(request_id, 502, "Output was lost while Redis was unreachable")
        )
    for output in outputs:
        if output.request_id in lost:
            continue
        by_destination.setdefault(output.destination, []).append(
            compact_item(output.item)
        )
    return {
        destination: {"agent_id": agent_id, "agent_name": agent_name, "items": items}
        for destination, items in by_destination.items()
    }
