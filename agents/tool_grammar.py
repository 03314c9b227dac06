"""A GBNF grammar that makes the model write a tool call, in its format.

For ``tool_choice: "required"`` (any of the tools offered) or a named
function: each tool's parameters schema becomes a rule (llama.cpp's JSON
Schema converter), and the root writes the format's framing around one
call, so that even a small model that never learnt tool calling returns a
call the parser reads.
"""

from __future__ import annotations

import json
from typing import Any

from balancer.contract import Tool
from balancer.grammar_limits import check_gbnf, check_json_schema_text
from balancer.model_offer import ToolCallFormat
from balancer.tool_calls import (
    DEEPSEEK_CALL_BEGIN,
    DEEPSEEK_CALL_END,
    DEEPSEEK_CALLS_BEGIN,
    DEEPSEEK_CALLS_END,
    DEEPSEEK_SEP,
)


class ToolGrammarError(ValueError):
    """The tools' schemas cannot be made into a grammar."""


def _literal(text: str) -> str:
    # JSON's string escapes (\" \\ \n) are GBNF's too.
    return json.dumps(text, ensure_ascii=False)


def _framing(format: ToolCallFormat, name: str) -> tuple[str, str]:
    """The text before and after a call's arguments."""
    if format == "hermes":
        return f'<tool_call>\n{{"name": "{name}", "arguments": ', "}\n</tool_call>"
    if format == "llama3":
        return f'{{"name": "{name}", "parameters": ', "}"
    if format == "mistral":
        return f'[TOOL_CALLS][{{"name": "{name}", "arguments": ', "}]"
    if format == "harmony":
        prefix = f"<|channel|>commentary to=functions.{name} <|constrain|>json"
        return prefix + "<|message|>", "<|call|>"
    if format == "deepseek":
        begin = f"{DEEPSEEK_CALLS_BEGIN}{DEEPSEEK_CALL_BEGIN}function{DEEPSEEK_SEP}"
        return (
            f"{begin}{name}\n```json\n",
            f"\n```{DEEPSEEK_CALL_END}{DEEPSEEK_CALLS_END}",
        )
    return f'{{"tool_calls": [{{"name": "{name}", "arguments": ', "}]}"


def tool_call_grammar(
    tools: list[Tool], format: ToolCallFormat, function: str | None = None
) -> str:
    """GBNF (root ``root``) for one call of ``function``, or of any of
    ``tools`` when None; ``ToolGrammarError`` when a schema cannot be used."""
    from llama_cpp.llama_grammar import SchemaConverter

    chosen = [
        tool["function"]
        for tool in tools
        if function is None or tool["function"]["name"] == function
    ]
    if not chosen:
        raise ToolGrammarError(f"no tool named {function!r} was offered")
    converter = SchemaConverter(  # type: ignore[no-untyped-call]
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
    )
    alternatives: list[str] = []
    for index, spec in enumerate(chosen):
        schema: Any = spec.get("parameters") or {"type": "object", "properties": {}}
        text = json.dumps(schema)
        try:
            check_json_schema_text(text)
            resolved = converter.resolve_refs(schema, f"tool-{index}")
            rule = converter.visit(  # type: ignore[no-untyped-call]
                resolved, f"tool-{index}-arguments"
            )
        except Exception as error:  # the converter raises many kinds
            raise ToolGrammarError(
                f"the parameters of {spec['name']!r} cannot be used: {error}"
            ) from None
        before, after = _framing(format, spec["name"])
        alternatives.append(f"{_literal(before)} {rule} {_literal(after)}")
    rules: str = converter.format_grammar()  # type: ignore[no-untyped-call]
    root = " | ".join(f"( {alternative} )" for alternative in alternatives)
    grammar = f"{rules}\nroot ::= {root}"
    try:
        check_gbnf(grammar)
    except ValueError as error:
        raise ToolGrammarError(str(error)) from None
    return grammar
