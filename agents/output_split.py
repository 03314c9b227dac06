"""A generation's text split into content, reasoning and tool-call text.

One ``OutputSplitter`` per generation, fed the text of each token as the
engine decodes it.  It sends content as ``ContentToken``, reasoning (a
``<think>`` block, harmony's analysis channel) as ``ReasoningToken`` and the
text of a tool call (from the format's opening marker on) as
``ToolCallToken``; at the end the tool-call text is parsed into a
``ToolCallParsed`` item (or ``ToolCallParseFailed``), validated against the
tools offered.  Text that could be the beginning of a marker is held until
the next token tells, so a marker never reaches a client half as content.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from agents.jobs import Generation
from balancer.contract import (
    OutputItem,
    ParsedToolCallItem,
    Tool,
    content_token_item,
    reasoning_token_item,
    tool_call_parse_failed_item,
    tool_call_parsed_item,
    tool_call_token_item,
    tool_call_validation_failed_item,
)
from balancer.model_offer import ReasoningFormat, ToolCallFormat
from balancer.tool_calls import (
    BARE_JSON_FORMATS,
    OPENING_MARKERS,
    ToolCallParseError,
    parse_tool_calls,
    starts_tool_call,
    validate_arguments,
)

State = Literal["content", "reasoning", "tool"]

# Reasoning's opening and closing markers, and framing text of the format
# that is neither content nor reasoning (harmony's message headers).
_REASONING: dict[ReasoningFormat, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "think_tags": (("<think>",), ("</think>",)),
    "harmony": (("<|channel|>analysis<|message|>",), ("<|end|>",)),
    "none": ((), ()),
}
_FRAMING: dict[ReasoningFormat, tuple[str, ...]] = {
    "harmony": (
        "<|start|>assistant",
        "<|channel|>final<|message|>",
        "<|end|>",
        "<|return|>",
    ),
}


@dataclass
class OutputSplitter:
    request_id: str
    # None: tool calls are not looked for (no tools, or not to be parsed).
    tool_format: ToolCallFormat | None
    reasoning_format: ReasoningFormat = "none"
    tools: list[Tool] = field(default_factory=list)
    # The prompt ended inside a reasoning block (a template that opens
    # ``<think>`` in its generation prompt).
    state: State = "content"
    held: str = ""
    tool_text: str = ""
    reasoning_tokens: int = 0
    tool_call_tokens: int = 0
    # Content written so far is only whitespace (a bare-JSON call may come).
    _blank: bool = True
    # ``plain`` as it was when the splitter was made: nothing a plain
    # splitter does makes it anything else (see ``feed``).
    _plain: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self._plain = self.plain

    @property
    def wants_special_tokens(self) -> bool:
        """Whether markers may be special tokens, to be decoded as text."""
        return self.tool_format is not None or self.reasoning_format != "none"

    @property
    def plain(self) -> bool:
        """Whether the text can only ever be content: no reasoning format, no
        tool calls looked for, and nothing held back.  Most streams (every
        raw prompt, most conversations) are plain, and each of their tokens
        goes out as it is, with no marker searched for."""
        return (
            self.tool_format is None
            and self.reasoning_format == "none"
            and self.state == "content"
            and not self.held
        )

    def feed(self, text: str) -> list[OutputItem]:
        """The items for one token's text."""
        if self._plain:
            # The fast path, one call per generated token: a plain stream has
            # no marker to look for (``plain``), so its text is its content.
            return [content_token_item(self.request_id, text)] if text else []
        items = self._split(self.held + text, final=False)
        # A token counts where its text went (a held one: where it is).
        variants = {
            next(iter(generated))
            for item in items
            if isinstance(item["response"], dict)
            and isinstance(generated := item["response"].get("GeneratedToken"), dict)
        }
        if "ToolCallToken" in variants or (not items and self.state == "tool"):
            self.tool_call_tokens += 1
        elif "ReasoningToken" in variants or (not items and self.state == "reasoning"):
            self.reasoning_tokens += 1
        return items

    def finish(self) -> list[OutputItem]:
        """The items that end the generation's text: what was held, and the
        parsed tool calls (before the caller's ``Done``)."""
        items = self._split(self.held, final=True)
        if self.state == "tool" and self.tool_format is not None:
            items += self._tool_call_result(self.tool_format)
        return items

    def _split(self, text: str, *, final: bool) -> list[OutputItem]:
        items: list[OutputItem] = []
        self.held = ""
        while text:
            if self.state == "tool":
                self.tool_text += text
                items.append(tool_call_token_item(self.request_id, text))
                return items
            if self.state == "reasoning":
                text = self._reasoning(text, items, final=final)
            else:
                text = self._content(text, items, final=final)
        return items

    def _reasoning(self, text: str, items: list[OutputItem], *, final: bool) -> str:
        closing = _REASONING[self.reasoning_format][1]
        found = _first(text, closing)
        if found is not None:
            index, marker = found
            if index:
                items.append(reasoning_token_item(self.request_id, text[:index]))
            self.state = "content"
            # Templates put blank lines between a thought and the answer.
            return text[index + len(marker) :].lstrip("\n")
        keep = 0 if final else _partial_suffix(text, closing)
        if len(text) > keep:
            items.append(
                reasoning_token_item(self.request_id, text[: len(text) - keep])
            )
        self.held = text[len(text) - keep :]
        return ""

    def _content(self, text: str, items: list[OutputItem], *, final: bool) -> str:
        opening = _REASONING[self.reasoning_format][0]
        framing = _FRAMING.get(self.reasoning_format, ())
        candidates: list[tuple[int, str, State | None]] = []
        found = _first(text, opening)
        if found is not None:
            candidates.append((found[0], found[1], "reasoning"))
        found = _first(text, framing)
        if found is not None:
            candidates.append((found[0], found[1], None))
        if self.tool_format is not None:
            start = starts_tool_call(text, self.tool_format)
            bare = self.tool_format in BARE_JSON_FORMATS and start == 0
            if start is not None and (not bare or self._blank):
                candidates.append((start, "", "tool"))
        if candidates:
            index, marker, state = min(candidates, key=lambda c: c[0])
            self._emit_content(text[:index], items)
            if state is not None:
                self.state = state
            return text[index + len(marker) :]
        markers = (*opening, *framing)
        if self.tool_format is not None:
            markers += OPENING_MARKERS[self.tool_format]
        keep = 0 if final else _partial_suffix(text, markers)
        if (
            not final
            and self.tool_format in BARE_JSON_FORMATS
            and self._blank
            and not text.strip()
        ):
            keep = len(text)  # a call may still begin with "{"
        self._emit_content(text[: len(text) - keep], items)
        self.held = text[len(text) - keep :]
        return ""

    def _emit_content(self, text: str, items: list[OutputItem]) -> None:
        if text:
            items.append(content_token_item(self.request_id, text))
            self._blank = self._blank and not text.strip()

    def _tool_call_result(self, format: ToolCallFormat) -> list[OutputItem]:
        try:
            calls = parse_tool_calls(self.tool_text, format)
        except ToolCallParseError as error:
            return [tool_call_parse_failed_item(self.request_id, str(error))]
        parsed: list[ParsedToolCallItem] = [
            {
                "id": call.id,
                "name": call.name,
                "arguments": {"ValidJson": call.arguments}
                if call.valid_json
                else {"InvalidJson": str(call.arguments)},
            }
            for call in calls
        ]
        items = [tool_call_parsed_item(self.request_id, parsed)]
        errors = [
            error for call in calls for error in validate_arguments(call, self.tools)
        ]
        if errors:
            items.append(tool_call_validation_failed_item(self.request_id, errors))
        return items


def _first(text: str, markers: tuple[str, ...]) -> tuple[int, str] | None:
    found = [(text.find(m), m) for m in markers if m in text]
    return min(found) if found else None


def _partial_suffix(text: str, markers: tuple[str, ...]) -> int:
    """The length of ``text``'s longest end that begins one of ``markers``."""
    longest = 0
    for marker in markers:
        for length in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:length]):
                longest = length
                break
    return longest


def splitter_for(job: Generation) -> OutputSplitter:
    """The splitter of a job's output: a raw prompt's is all content."""
    if job.raw_prompt is not None:
        return OutputSplitter(job.request_id, None)
    return OutputSplitter(
        job.request_id,
        job.tool_format,
        job.reasoning_format,
        tools=job.tools or [],
        state="reasoning" if job.opens_reasoning else "content",
    )
