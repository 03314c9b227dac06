"""Tool calls read from a model's output, in the format of its family.

Framework-free.  The agent streams a generation's text through an
``OutputSplitter`` (``agents.output_split``), which sets the tool-call text
apart by the format's opening marker; at the end, ``parse_tool_calls`` reads
the calls from that text.  The format comes from the template in use
(``balancer.model_offer.detect_tool_call_format``):

- ``hermes`` (Qwen, Hermes, many others): ``<tool_call>{"name": ..,
  "arguments": {..}}</tool_call>``, one block per call;
- ``llama3``: a JSON object ``{"name": .., "parameters": {..}}`` (or
  ``"arguments"``), several separated by ``;``, or a built-in tool after
  ``<|python_tag|>`` as ``name.call(key="value", ...)``;
- ``mistral``: ``[TOOL_CALLS]`` then a JSON list of ``{"name", "arguments"}``,
  or (newer templates) ``name[ARGS]{..}`` per call;
- ``harmony`` (gpt-oss): a message addressed ``to=functions.<name>`` whose
  body, after ``<|message|>``, is the arguments' JSON, ending at ``<|call|>``;
- ``deepseek``: a call-begin marker, ``function``, a separator marker and
  the name, then the arguments in a JSON code block (R1), or the name, the
  separator and the JSON (V3.1), each call ending with a call-end marker
  (the markers are spelled with full-width bars, ``DEEPSEEK_*`` below);
- ``generic``: a JSON object ``{"tool_calls": [{"name", "arguments"}]}``,
  ``{"tool_call": {..}}`` or a bare ``{"name", "arguments"}``.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from balancer.model_offer import ToolCallFormat

# DeepSeek's markers: full-width vertical bars and "lower one eighth block"
# spaces, written as escapes so that no reader mistakes them for ASCII.
_BAR = "\uff5c"
_SPACE = "\u2581"
DEEPSEEK_CALLS_BEGIN = f"<{_BAR}tool{_SPACE}calls{_SPACE}begin{_BAR}>"
DEEPSEEK_CALL_BEGIN = f"<{_BAR}tool{_SPACE}call{_SPACE}begin{_BAR}>"
DEEPSEEK_SEP = f"<{_BAR}tool{_SPACE}sep{_BAR}>"
DEEPSEEK_CALL_END = f"<{_BAR}tool{_SPACE}call{_SPACE}end{_BAR}>"
DEEPSEEK_CALLS_END = f"<{_BAR}tool{_SPACE}calls{_SPACE}end{_BAR}>"

# Where a tool call starts in each format's output; ``generic`` and
# ``llama3`` also start with a bare JSON object (see ``starts_tool_call``).
OPENING_MARKERS: dict[ToolCallFormat, tuple[str, ...]] = {
    "hermes": ("<tool_call>",),
    "llama3": ("<|python_tag|>",),
    "mistral": ("[TOOL_CALLS]",),
    "harmony": ("to=functions.",),
    "deepseek": (DEEPSEEK_CALLS_BEGIN, DEEPSEEK_CALL_BEGIN),
    "generic": (),
}
# Formats whose model may answer with a bare JSON object as its call.
BARE_JSON_FORMATS = frozenset({"llama3", "generic"})


class ToolCallParseError(ValueError):
    """Tool-call text that holds no call in the expected format."""


@dataclass(frozen=True)
class ParsedCall:
    id: str
    name: str
    # The arguments' JSON value, or the text when it is not valid JSON.
    arguments: Any
    valid_json: bool

    def arguments_text(self) -> str:
        """The arguments as OpenAI sends them: JSON text."""
        if self.valid_json:
            return json.dumps(self.arguments, ensure_ascii=False)
        return str(self.arguments)


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _call(name: Any, arguments: Any) -> ParsedCall:
    if not isinstance(name, str) or not name:
        raise ToolCallParseError("a tool call has no function name")
    if isinstance(arguments, str):
        try:
            return ParsedCall(call_id(), name, json.loads(arguments), True)
        except ValueError:
            return ParsedCall(call_id(), name, arguments, False)
    if arguments is None:
        arguments = {}
    return ParsedCall(call_id(), name, arguments, True)


_DECODER = json.JSONDecoder()


def _json_values(text: str) -> list[Any]:
    """The JSON values one after another in ``text`` (separated by spaces,
    commas or semicolons)."""
    values: list[Any] = []
    index = 0
    while True:
        while index < len(text) and text[index] in " \t\r\n,;":
            index += 1
        if index >= len(text):
            return values
        try:
            value, index = _DECODER.raw_decode(text, index)
        except ValueError as error:
            raise ToolCallParseError(
                f"the tool call is not valid JSON: {error}"
            ) from None
        values.append(value)


def _from_object(value: Any) -> list[ParsedCall]:
    """Calls from one JSON value: a call, a list of calls, or a wrapper."""
    if isinstance(value, list):
        return [call for item in value for call in _from_object(item)]
    if not isinstance(value, dict):
        raise ToolCallParseError("a tool call must be a JSON object")
    if "tool_calls" in value:
        return _from_object(value["tool_calls"])
    if "tool_call" in value:
        return _from_object(value["tool_call"])
    if isinstance(value.get("function"), dict):
        return _from_object(value["function"])
    arguments = value.get("arguments", value.get("parameters"))
    return [_call(value.get("name"), arguments)]


_HERMES = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_PYTHON_TAG = re.compile(r"<\|python_tag\|>\s*([\w.-]+)\.call\((.*)\)\s*$", re.DOTALL)
_KEYWORD = re.compile(r'(\w+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,]+)')
_MISTRAL_ARGS = re.compile(r"([\w.-]+)\[ARGS\]")
_HARMONY = re.compile(
    r"to=functions\.([\w.-]+).*?<\|message\|>(.*?)(?:<\|call\|>|<\|end\|>|$)",
    re.DOTALL,
)
_DEEPSEEK = re.compile(
    re.escape(DEEPSEEK_CALL_BEGIN)
    + "(?:function"
    + re.escape(DEEPSEEK_SEP)
    + r"([^\n]+)\n```(?:json)?\n(.*?)\n```|([^<]+?)"
    + re.escape(DEEPSEEK_SEP)
    + r"(.*?))\s*(?:"
    + re.escape(DEEPSEEK_CALL_END)
    + "|$)",
    re.DOTALL,
)


def _hermes(text: str) -> list[ParsedCall]:
    blocks = _HERMES.findall(text)
    if not blocks:
        raise ToolCallParseError("no <tool_call> block")
    return [
        call
        for block in blocks
        for value in _json_values(block.strip())
        for call in _from_object(value)
    ]


def _llama3(text: str) -> list[ParsedCall]:
    tagged = _PYTHON_TAG.search(text)
    if tagged:
        arguments: dict[str, Any] = {}
        for key, raw in _KEYWORD.findall(tagged.group(2)):
            value = raw.strip()
            try:
                arguments[key] = json.loads(value)
            except ValueError:
                arguments[key] = value
        return [_call(tagged.group(1), arguments)]
    body = text.split("<|python_tag|>", 1)[-1].strip()
    return [call for value in _json_values(body) for call in _from_object(value)]


def _mistral(text: str) -> list[ParsedCall]:
    body = text.split("[TOOL_CALLS]", 1)[-1].strip()
    if _MISTRAL_ARGS.match(body):
        calls: list[ParsedCall] = []
        for part in body.split("[TOOL_CALLS]"):
            pieces = _MISTRAL_ARGS.split(part.strip())
            # ["", name, args, name, args, ...]
            for name, arguments in zip(pieces[1::2], pieces[2::2], strict=True):
                values = _json_values(arguments.strip())
                calls.append(_call(name, values[0] if values else {}))
        return calls
    return [call for value in _json_values(body) for call in _from_object(value)]


def _harmony(text: str) -> list[ParsedCall]:
    found = _HARMONY.findall(text)
    if not found:
        raise ToolCallParseError("no message to=functions.<name>")
    return [_call(name, body.strip()) for name, body in found]


def _deepseek(text: str) -> list[ParsedCall]:
    calls: list[ParsedCall] = []
    for fenced_name, fenced, plain_name, plain in _DEEPSEEK.findall(text):
        name = (fenced_name or plain_name).strip()
        calls.append(_call(name, (fenced or plain).strip()))
    if not calls:
        raise ToolCallParseError("no DeepSeek tool-call block")
    return calls


def _generic(text: str) -> list[ParsedCall]:
    return [
        call for value in _json_values(text.strip()) for call in _from_object(value)
    ]


_PARSERS = {
    "hermes": _hermes,
    "llama3": _llama3,
    "mistral": _mistral,
    "harmony": _harmony,
    "deepseek": _deepseek,
    "generic": _generic,
}


def parse_tool_calls(text: str, format: ToolCallFormat) -> list[ParsedCall]:
    """The calls in ``text`` (a generation's tool-call part) in ``format``;
    ``ToolCallParseError`` when there is none to read."""
    calls = _PARSERS[format](text)
    if not calls:
        raise ToolCallParseError("no tool call found")
    return calls


def starts_tool_call(text: str, format: ToolCallFormat) -> int | None:
    """Where a tool call starts in ``text``, or None.

    For the formats whose calls may be a bare JSON object, an answer whose
    first character (after spaces) is ``{`` is a call.
    """
    positions = [text.find(m) for m in OPENING_MARKERS[format] if m in text]
    if format == "harmony" and positions:
        # The call's header starts with the message's own start.
        start = text.rfind("<|start|>", 0, min(positions))
        channel = text.rfind("<|channel|>", 0, min(positions))
        return max(start, channel) if max(start, channel) >= 0 else min(positions)
    if positions:
        return min(positions)
    if format in BARE_JSON_FORMATS and text.lstrip().startswith("{"):
        return 0
    return None


def could_start_tool_call(text: str, format: ToolCallFormat) -> bool:
    """Whether ``text``'s end could be the beginning of an opening marker
    (so it must be held back until the next token says)."""
    return any(
        text.endswith(marker[:length])
        for marker in OPENING_MARKERS[format]
        for length in range(1, len(marker))
    )


def validate_arguments(call: ParsedCall, tools: list[dict[str, Any]]) -> list[str]:
    """Why a call does not fit the tools offered (empty when it does): an
    unknown function, arguments that are not a JSON object, required
    parameters missing.  Not a full JSON Schema validator."""
    by_name = {
        tool.get("function", {}).get("name"): tool.get("function", {})
        for tool in tools
        if isinstance(tool, dict)
    }
    if call.name not in by_name:
        return [f"{call.name}: no tool of that name was offered"]
    if not call.valid_json or not isinstance(call.arguments, dict):
        return [f"{call.name}: the arguments are not a JSON object"]
    schema = by_name[call.name].get("parameters") or {}
    required = schema.get("required", []) if isinstance(schema, dict) else []
    return [
        f"{call.name}: the required argument {name!r} is missing"
        for name in required
        if name not in call.arguments
    ]
