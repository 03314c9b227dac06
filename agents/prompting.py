"""A request's prompt as tokens: rendered and tokenized off the decode thread.

llama.cpp's tokenizer takes seconds on long text full of special-token
strings, and every other slot's next token would wait for it on the decode
thread; so prompts are made on a thread of their own (``PromptPreparer``),
after being bounded in characters and messages against the slot's context.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping

from agents.image_prompt import (
    Tokenizer,
    content_with_markers,
    decode_conversation_images,
    has_images,
    image_prompt,
)
from agents.jobs import Generation, Output, error_output
from agents.multimodal import (
    DecodedImage,
    ImageDecodingFailed,
    ImagePreprocessingFailed,
    MultimodalError,
    MultimodalNotSupported,
    Projection,
    require_projection,
)
from agents.positions import PositionKey, text_only
from agents.tool_grammar import ToolGrammarError, tool_call_grammar
from balancer.chat_template import ChatTemplate, ChatTemplateError, message_text
from balancer.contract import GenerationErrorKind, generation_failed_item
from balancer.model_offer import (
    RAG,
    TOOL_USE,
    detect_reasoning_format,
    detect_tool_call_format,
)

logger = logging.getLogger(__name__)


class PromptTooLarge(Exception):
    """A prompt that cannot fit in a slot, found before tokenizing it."""


def prompt_keys(
    job: Generation,
    *,
    template: ChatTemplate | None,
    tokenizer: Tokenizer,
    context_per_slot: int,
    char_limit: int,
    variants: Mapping[str, ChatTemplate] | None = None,
    projection: Projection | None = None,
    image_resize_to_fit: int = 1024,
) -> list[PositionKey]:
    """The prompt's keys, one per position (token ids for text; see
    ``agents.positions``), refused before tokenizing when it is too long
    to fit (the tokenizer's time grows with the text, faster than
    linearly for text full of special-token strings).

    ``variants`` are the model's named templates: as Hugging Face picks
    them, ``tool_use`` renders a request that offers tools; ``rag`` one
    that passes documents (ours, where HF needs the name asked for).

    A conversation with images (``image_url`` parts) needs ``projection``
    (else ``MultimodalNotSupported``); its images are decoded first, as
    Paddler does (``ImageDecodingFailed``), scaled to
    ``image_resize_to_fit``, and the prompt's keys then hold their
    positions, with ``job.images`` the chunks the engine evaluates
    (``agents.image_prompt``)."""
    if job.raw_prompt is not None:
        if len(job.raw_prompt) > char_limit:
            raise PromptTooLarge(
                f"the prompt is {len(job.raw_prompt)} characters; a slot's "
                f"context of {context_per_slot} tokens holds at most "
                f"{char_limit}"
            )
        # A raw prompt is written by the caller, template and all: its
        # special-token strings are meant as special tokens.
        return list(tokenizer.tokenize(job.raw_prompt, add_special=True))
    if template is None:
        raise ChatTemplateError("the model has no chat template and no override is set")
    conversation = job.conversation or []
    if len(conversation) > context_per_slot:
        raise PromptTooLarge(
            f"the conversation has {len(conversation)} messages; a slot's "
            f"context holds {context_per_slot} tokens"
        )
    images: list[DecodedImage] | None = None
    if has_images(conversation):
        images = decode_conversation_images(conversation, max_edge=image_resize_to_fit)
        projection = require_projection(projection)
        marker = projection.marker
        messages = [
            {**message, "content": content_with_markers(message.get("content"), marker)}
            for message in conversation
        ]
    else:
        messages = [
            {**message, "content": message_text(message.get("content", ""))}
            for message in conversation
        ]
    size = sum(len(message["content"]) for message in messages)
    if size > char_limit:
        raise PromptTooLarge(
            f"the conversation is {size} characters; a slot's context of "
            f"{context_per_slot} tokens holds at most {char_limit}"
        )
    extra = dict(job.chat_template_kwargs)
    documents = extra.pop("documents", None)
    variants = variants or {}
    if job.tools and TOOL_USE in variants:
        template = variants[TOOL_USE]
    elif documents and RAG in variants:
        template = variants[RAG]
    try:
        segments = template.render_segments(
            messages,
            add_generation_prompt=job.add_generation_prompt,
            tools=job.tools,
            documents=documents if isinstance(documents, list) else None,
            enable_thinking=job.enable_thinking,
            extra=extra,
            max_chars=char_limit,
        )
    except ChatTemplateError as error:
        if "would exceed" in str(error):
            raise PromptTooLarge(
                f"the rendered prompt exceeds {char_limit} characters, more than a "
                f"slot's context of {context_per_slot} tokens holds"
            ) from None
        raise
    _read_formats(job, template.source, "".join(text for text, _ in segments))
    if images is not None and projection is not None:
        job.images = image_prompt(
            segments, images, projection=projection, tokenizer=tokenizer
        )
        return job.images.keys
    return list(tokenizer.tokenize_segments(segments))


def prompt_tokens(
    job: Generation,
    *,
    template: ChatTemplate | None,
    tokenizer: Tokenizer,
    context_per_slot: int,
    char_limit: int,
    variants: Mapping[str, ChatTemplate] | None = None,
) -> list[int]:
    """The token ids of a prompt without images (``prompt_keys`` for one
    with); a conversation with images raises ``MultimodalNotSupported``."""
    keys = prompt_keys(
        job,
        template=template,
        tokenizer=tokenizer,
        context_per_slot=context_per_slot,
        char_limit=char_limit,
        variants=variants,
    )
    tokens = text_only(keys)
    if tokens is None:  # not reached: no projection, so no image keys
        raise MultimodalNotSupported("the prompt has images")
    return tokens


def _read_formats(job: Generation, source: str, prompt: str) -> None:
    """How the job's output is split (``agents.output_split``), from the
    template in use, and the grammar of a required tool call."""
    job.reasoning_format = detect_reasoning_format(source)
    job.opens_reasoning = (
        job.reasoning_format == "think_tags" and prompt.rstrip().endswith("<think>")
    )
    if not job.tools:
        return
    format = detect_tool_call_format(source)
    if job.parse_tool_calls or job.tool_choice != "auto":
        job.tool_format = format
    if job.tool_choice != "auto" and job.grammar is None:
        function = None if job.tool_choice == "required" else job.tool_choice
        name = function["function"] if isinstance(function, dict) else None
        job.grammar = tool_call_grammar(job.tools, format, name)
        job.grammar_root = "root"


# What a prompt that cannot be made ends with, as Paddler names it.
_GENERATION_FAILURES = (
    ChatTemplateError,
    ToolGrammarError,
    ImageDecodingFailed,
    MultimodalNotSupported,
)


def _failure_variant(error: Exception) -> GenerationErrorKind:
    if isinstance(error, ChatTemplateError):
        return "ChatTemplateError"
    if isinstance(error, ToolGrammarError):
        return "ToolCallValidatorBuildFailed"
    if isinstance(error, ImageDecodingFailed):
        return "ImageDecodingFailed"
    return "MultimodalNotSupported"


class PromptPreparer:
    """Makes the prompts of submitted jobs, one at a time, on its own thread.

    Each job ends in one call of ``on_prepared(job, keys, failure)``, on
    the preparer's thread: ``failure`` is the request's last output item when
    its prompt could not be made (and ``tokens`` is then empty).  No
    exception from one request ends the thread.
    """

    def __init__(
        self,
        *,
        prepare: Callable[[Generation], list[PositionKey]],
        on_prepared: Callable[[Generation, list[PositionKey], Output | None], None],
    ) -> None:
        self._prepare = prepare
        self._on_prepared = on_prepared
        self._jobs: queue.Queue[Generation | None] = queue.Queue()
        self._thread = threading.Thread(
            target=self._run, name="paddler-preparer", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def put(self, job: Generation) -> None:
        self._jobs.put(job)

    def stop(self) -> None:
        self._jobs.put(None)

    def join(self, timeout: float) -> bool:
        """Whether the thread has ended, waiting up to ``timeout`` for it."""
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            prompt: list[PositionKey] = []
            failure: Output | None = None
            try:
                prompt = self._prepare(job)
            except _GENERATION_FAILURES as error:
                # Paddler's terminal variants; the request never takes a slot.
                failure = Output(
                    job.destination,
                    generation_failed_item(
                        job.request_id, _failure_variant(error), str(error)
                    ),
                )
            except PromptTooLarge as error:
                failure = error_output(job, 413, str(error))
            except ImagePreprocessingFailed as error:
                failure = error_output(job, 500, str(error))
            except MultimodalError as error:  # markers and images that differ
                failure = error_output(job, 400, str(error))
            except Exception as error:  # one request must not end the thread
                logger.exception("preparing request %s failed", job.request_id)
                failure = error_output(job, 500, f"the prompt failed: {error}")
            self._on_prepared(job, prompt, failure)
