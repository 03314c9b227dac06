"""What an agent's engine is asked to do, what it answers, and the engine
contract the worker relies on.

Both engines (the llama.cpp one in ``agents.engine`` and the synthetic one in
``agents.synthetic``) satisfy ``EngineProtocol``: the worker holds either
through it and never asks which one it has.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from agents.positions import PositionKey
from balancer.chat_template import ChatTemplate
from balancer.contract import (
    ConversationPrefix,
    GenerationKind,
    ItemError,
    Message,
    Normalization,
    OutputItem,
    PromptPrefix,
    RawPromptPrefix,
    Response,
    SlotReport,
    Tool,
    ToolChoice,
    error_item,
)
from balancer.model_offer import ReasoningFormat, ToolCallFormat

if TYPE_CHECKING:
    from agents.image_prompt import ImagePrompt


class ModelLoadError(Exception):
    pass


@dataclass
class Generation:
    """What a client asked an agent to generate."""

    request_id: str
    max_tokens: int
    raw_prompt: str | None = None
    conversation: list[Message] | None = None
    add_generation_prompt: bool = True
    enable_thinking: bool = False
    tools: list[Tool] | None = None
    # A request's ``chat_template_kwargs``: extra template variables.
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    # Tool calls and reasoning (issue 15): what the client asked for, and
    # what the preparer found in the template in use.
    tool_choice: ToolChoice = "auto"
    parse_tool_calls: bool = True
    tool_format: ToolCallFormat | None = None
    reasoning_format: ReasoningFormat = "none"
    # The rendered prompt ends inside a reasoning block (``<think>\n``).
    opens_reasoning: bool = False
    grammar: str | None = None
    grammar_root: str = "root"
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    # The inbox (Redis list) of the web process that holds the client;
    # opaque to the engine, handed back with every output item.
    destination: str = ""
    # The conversation as the client sent it (before a default system prompt
    # was put first): routing hashes are computed on this on both sides.
    original_conversation: list[Message] | None = None
    # Its tokens, once the preparer thread has made them: one key per
    # position, token ids for text (``agents.positions``).
    prompt: list[PositionKey] = field(default_factory=list)
    # Its images, tokenized, for a conversation that has some; owned by the
    # job until it ends (``close_images``).
    images: ImagePrompt | None = None

    def close_images(self) -> None:
        """Free the libmtmd chunks of its images, once the job is over."""
        if self.images is not None:
            self.images.close()
            self.images = None

    @property
    def kind(self) -> GenerationKind:
        return "raw_prompt" if self.raw_prompt is not None else "conversation"

    def prefix_params(self) -> PromptPrefix:
        """The params routing hashes, as the web tier hashed them."""
        if self.raw_prompt is not None:
            prompt: RawPromptPrefix = {"raw_prompt": self.raw_prompt}
            return prompt
        conversation: ConversationPrefix = {
            "conversation_history": self.original_conversation or []
        }
        return conversation


@dataclass
class EmbeddingJob:
    """Documents to embed: ``documents`` is a list of (id, text) pairs."""

    request_id: str
    documents: list[tuple[str, str]]
    normalization: Normalization = "None"
    destination: str = ""


@dataclass
class Output:
    """One item of a request's output and the inbox it goes to."""

    # The job's ``destination``.
    destination: str
    item: OutputItem

    @property
    def request_id(self) -> str:
        return self.item["request_id"]

    @property
    def final(self) -> bool:
        return self.item["final"]

    @property
    def response(self) -> Response | None:
        return self.item["response"]

    @property
    def error(self) -> ItemError | None:
        return self.item["error"]


def error_output(job: Generation | EmbeddingJob, code: int, description: str) -> Output:
    """The last item of a request that failed."""
    return Output(job.destination, error_item(job.request_id, code, description))


class EngineProtocol(Protocol):
    """What the worker needs of an engine, whichever backend it is.

    ``run`` is the engine's loop, on a thread the worker starts; every other
    method is safe to call from other threads while it runs.  Output goes to
    the ``on_output`` callback the engine was built with.
    """

    n_slots: int
    metadata: dict[str, str]
    chat_template: ChatTemplate | None
    # The vocabulary's BOS and EOS tokens as text ("" when it has none).
    bos_token: str
    eos_token: str
    # Set once the engine can take requests.
    ready: threading.Event
    # When the engine loop last went round (monotonic seconds), for the
    # worker's watchdog; ``failure`` says why the loop ended, if it did.
    beat: float
    failure: str | None

    def run(self) -> None: ...

    def submit(self, job: Generation) -> None: ...

    def submit_embeddings(self, job: EmbeddingJob) -> None: ...

    def cancel(self, request_id: str) -> None: ...

    def use_chat_template(self, override: str | None) -> None: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...

    @property
    def slots_processing(self) -> int: ...

    @property
    def serves_images(self) -> bool:
        """Whether it reads images (a vision projection is loaded)."""
        ...

    def destinations(self) -> dict[str, str]: ...

    def slot_states(self) -> list[SlotReport]: ...
