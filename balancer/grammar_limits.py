"""Bounds on grammars, checked in plain Python before llama.cpp sees them.

llama.cpp parses GBNF with a recursive descent parser: a grammar of 100,000
nested groups overflows its stack and kills the agent process (a segfault no
Python code can catch).  Repetitions are expanded into copies (``x{1000}`` is
a thousand elements), so a short grammar can also ask for millions of rules.
Both the web tier (to answer 400 early) and the agent (which must not trust
the web tier) run these checks; they scan the text in one iterative pass, so
the check itself cannot overflow anything.

Framework-free: it lives here, beside the other request checks, because the
web tier must not import the agent package; the agent imports it as it does
the chat template.
"""

from __future__ import annotations

# What a real grammar stays far below: llama.cpp's own JSON grammar nests 4
# groups deep and has 11 rules; a JSON schema of a few hundred properties
# converts to some thousands of rules and tens of kilobytes.
MAX_GRAMMAR_CHARS = 100_000
MAX_GRAMMAR_NESTING = 100
MAX_GRAMMAR_RULES = 2_000
MAX_GRAMMAR_REPETITION = 10_000
# Elements once every repetition is expanded (a literal counts its length).
MAX_GRAMMAR_EXPANDED = 200_000
MAX_SCHEMA_CHARS = 100_000
MAX_SCHEMA_NESTING = 64

_NAME_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
)


class GrammarTooComplex(ValueError):
    """The grammar exceeds a limit; the message names the limit."""


def _skip_quoted(text: str, start: int, close: str) -> int:
    """Index just past the literal or class opened at ``start``."""
    index = start + 1
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == close:
            return index + 1
        index += 1
    return len(text)


def _repetition_count(body: str) -> int:
    """The largest count of ``{m}``, ``{m,}`` or ``{m,n}`` (0 if malformed)."""
    counts = [part.strip() for part in body.split(",")]
    numbers = [int(part) for part in counts if part.isdigit()]
    return max(numbers, default=0)


def check_gbnf(text: str) -> None:
    """Raise ``GrammarTooComplex`` if ``text`` exceeds a grammar limit.

    Syntax errors are left to llama.cpp, which reports them without crashing
    once the grammar is within these bounds.
    """
    if len(text) > MAX_GRAMMAR_CHARS:
        raise GrammarTooComplex(
            f"the grammar is {len(text)} characters long; the limit is "
            f"{MAX_GRAMMAR_CHARS}"
        )
    # Expanded size of each open group, innermost last; [0] is the grammar.
    sizes = [0]
    last = 0  # size of the element a repetition would apply to
    rules = 0
    index = 0
    length = len(text)

    def add(size: int) -> None:
        nonlocal last
        sizes[-1] += size
        last = size

    while index < length:
        char = text[index]
        if char == "#":
            newline = text.find("\n", index)
            index = length if newline == -1 else newline + 1
            continue
        if char == '"':
            end = _skip_quoted(text, index, '"')
            add(max(end - index - 2, 1))
            index = end
        elif char == "[":
            end = _skip_quoted(text, index, "]")
            add(1)
            index = end
        elif char == "<":
            end = text.find(">", index)
            add(1)
            index = length if end == -1 else end + 1
        elif char == "(":
            if len(sizes) > MAX_GRAMMAR_NESTING:
                raise GrammarTooComplex(
                    f"the grammar nests groups more than {MAX_GRAMMAR_NESTING} deep"
                )
            sizes.append(0)
            last = 0
            index += 1
        elif char == ")":
            # An unbalanced ")" is a syntax error llama.cpp reports itself.
            inner = sizes.pop() if len(sizes) > 1 else 0
            add(inner)
            index += 1
        elif char == "{":
            end = text.find("}", index)
            end = length if end == -1 else end
            count = _repetition_count(text[index + 1 : end])
            if count > MAX_GRAMMAR_REPETITION:
                raise GrammarTooComplex(
                    f"a repetition of {count} is more than the limit of "
                    f"{MAX_GRAMMAR_REPETITION}"
                )
            sizes[-1] += last * max(count - 1, 0)
            last *= max(count, 1)
            index = end + 1
        elif text.startswith("::=", index):
            rules += 1
            if rules > MAX_GRAMMAR_RULES:
                raise GrammarTooComplex(
                    f"the grammar has more than {MAX_GRAMMAR_RULES} rules"
                )
            index += 3
        elif char in _NAME_CHARS:
            while index < length and text[index] in _NAME_CHARS:
                index += 1
            add(1)
        else:
            if char == ".":
                add(1)
            index += 1
        if sizes[-1] > MAX_GRAMMAR_EXPANDED or sizes[0] > MAX_GRAMMAR_EXPANDED:
            raise GrammarTooComplex(
                "the grammar expands to more than "
                f"{MAX_GRAMMAR_EXPANDED} elements once its repetitions are copied"
            )
    if sum(sizes) > MAX_GRAMMAR_EXPANDED:
        raise GrammarTooComplex(
            f"the grammar expands to more than {MAX_GRAMMAR_EXPANDED} elements "
            "once its repetitions are copied"
        )


def check_json_schema_text(text: str) -> None:
    """Raise ``GrammarTooComplex`` if a JSON schema (as text) is too big or deep.

    The schema becomes a grammar by a recursive converter, so its nesting is
    bounded before it is parsed; brackets inside strings do not count.
    """
    if len(text) > MAX_SCHEMA_CHARS:
        raise GrammarTooComplex(
            f"the JSON schema is {len(text)} characters long; the limit is "
            f"{MAX_SCHEMA_CHARS}"
        )
    depth = 0
    index = 0
    while index < len(text):
        char = text[index]
        if char == '"':
            index = _skip_quoted(text, index, '"')
            continue
        if char in "[{":
            depth += 1
            if depth > MAX_SCHEMA_NESTING:
                raise GrammarTooComplex(
                    f"the JSON schema nests more than {MAX_SCHEMA_NESTING} deep"
                )
        elif char in "]}":
            depth -= 1
        index += 1
