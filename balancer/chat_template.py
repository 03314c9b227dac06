"""Chat-template rendering in a Jinja sandbox.

A template is user input (it comes from a GGUF file or from an operator), so it
runs in Jinja's ``ImmutableSandboxedEnvironment``: no attribute starting with an
underscore, no mutation of the objects it is given, no access to Python
internals.

The dialect is Hugging Face's ``apply_chat_template``, because that is what
model authors test their templates with:

- Jinja's default (lenient) undefined: a template may test keys a message does
  not have (``message.tool_calls is defined``, ``tools``, ``documents``, a
  schema's ``enum``), and an undefined value prints as nothing;
- the globals ``raise_exception`` and ``strftime_now`` (the local time,
  formatted), the ``loopcontrols`` extension (``{% break %}``,
  ``{% continue %}``) and the ``{% generation %}`` block (it marks the
  assistant's part for training; rendering just writes its body);
- ``tojson`` with ``ensure_ascii``, ``indent``, ``separators`` and
  ``sort_keys``, not escaping HTML as Jinja's own does;
- the variables ``messages``, ``tools``, ``documents``,
  ``add_generation_prompt``, ``bos_token``, ``eos_token``,
  ``enable_thinking``, and whatever extra keyword arguments a request passes
  (``chat_template_kwargs``);
- tool-call ``arguments`` as a mapping: clients send them as JSON text (as
  OpenAI does), templates iterate them (``arguments.items()``).

A render has a budget: a time limit, checked at every call, operator, item
and attribute lookup the template makes and at every piece of output; an
output-size limit; and a size check on the arguments of calls and filters
that could build a huge string in one go (``center``, ``ljust``, ``replace``,
``indent``, ...), so that no single operation allocates past the limit before
the output check sees it.  Any exception a template raises (the sandbox's own
``OverflowError`` for a huge ``range`` included) is a ``ChatTemplateError``:
a template is code we did not write, and it must fail the one request, never
the thread rendering it.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, NoReturn

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

# How long one render may take, and how much text it may produce by default.
RENDER_TIME_LIMIT_S = 2.0
RENDER_OUTPUT_LIMIT_CHARS = 8 * 1024 * 1024
# The variables a render always sets: a request's ``chat_template_kwargs``
# may add others (and override ``enable_thinking``, ``bos_token``,
# ``eos_token``, as Hugging Face lets its keyword arguments do), never these.
RESERVED_VARIABLES = frozenset(
    {"messages", "tools", "documents", "add_generation_prompt"}
)
# Marks around message contents while finding where they land in a rendered
# prompt (see ``ChatTemplate.render_segments``); private-use characters.
_OPEN = "\ue000"
_CLOSE = "\ue001"

# Gemma's turn format; the demo model ships without a template of its own.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{% if role == 'system' %}"
    "<start_of_turn>user\n{{ message['content'] | trim }}\n\n"
    "{% elif role == 'user' and loop.index0 > 0"
    " and messages[loop.index0 - 1]['role'] == 'system' %}"
    "{{ message['content'] | trim }}<end_of_turn>\n"
    "{% else %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


class ChatTemplateError(Exception):
    """The template does not compile, or raised while rendering."""


class _TemplateRaised(Exception):
    pass


class _BudgetExceeded(Exception):
    pass


class _Budget:
    def __init__(self, time_limit_s: float, max_chars: int) -> None:
        self.deadline = time.monotonic() + time_limit_s
        self.time_limit_s = time_limit_s
        self.max_chars = max_chars

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise _BudgetExceeded(f"rendering took longer than {self.time_limit_s:g} s")

    def check_size(self, size: int) -> None:
        if size > self.max_chars:
            raise _BudgetExceeded(
                f"the output would exceed {self.max_chars} characters"
            )


# The budget of the render running on this thread (renders do not nest).
_current = threading.local()


def _budget() -> _Budget | None:
    budget: _Budget | None = getattr(_current, "budget", None)
    return budget


def _sized(value: Any) -> int:
    return len(value) if isinstance(value, (str, list, tuple, dict)) else 0


# A run of digits in a format string ("%900000000d", "{:>900000000}") is a
# width or precision: checked before formatting allocates it.
_DIGITS = re.compile(r"\d{7,}")


def _check_format(budget: _Budget, text: Any) -> None:
    if isinstance(text, str):
        for digits in _DIGITS.findall(text):
            budget.check_size(int(digits))


def _check_arguments(budget: _Budget, args: tuple[Any, ...], kwargs: Any) -> None:
    """No argument asks for more than the output may hold: a width
    (``center(n)``, ``ljust(n)``, ``batch(n, fill)``) makes a value that
    large before any output check could see it."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool):
            budget.check_size(abs(value))


def _check_result(budget: _Budget, value: Any) -> Any:
    budget.check_size(_sized(value))
    return value


def _estimate_replace(text: Any, old: Any, new: Any) -> int:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        count = text.count(old) if old else len(text) + 1
        return len(text) + count * max(len(new) - len(old), 0)
    return 0


def _estimate_join(value: Any, separator: Any = "", *_: Any) -> int:
    if isinstance(value, (list, tuple, range)) and isinstance(separator, str):
        pieces = sum(len(item) for item in value if isinstance(item, str))
        return pieces + len(separator) * len(value)
    return 0


def _estimate_indent(text: Any, width: Any = 4, *_: Any, **__: Any) -> int:
    lines = text.count("\n") + 1 if isinstance(text, str) else 0
    size = len(width) if isinstance(width, str) else width
    return _sized(text) + lines * size if isinstance(size, int) else 0


# What a filter or string method would produce, worked out before it runs,
# for those whose output can be far larger than their inputs.
_ESTIMATES: dict[str, Callable[..., int]] = {
    "replace": _estimate_replace,
    "join": _estimate_join,
    "indent": _estimate_indent,
}


def _budgeted_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    estimate = _ESTIMATES.get(name)

    @functools.wraps(function)  # keeps Jinja's pass_context marks
    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        if budget is None:
            return function(*args, **kwargs)
        budget.tick()
        _check_arguments(budget, args, kwargs)
        # Jinja passes a context first to some filters: find the value.
        values = [a for a in args if not isinstance(a, _JINJA_CONTEXTS)]
        if name == "join" and values and not isinstance(values[0], (str, dict)):
            # A generator (``map``'s output) is read once: keep its items
            # to size the result before joining them.
            items = list(values[0])
            first = len(args) - len(values)
            args = (*args[:first], items, *args[first + 1 :])
            values[0] = items
        if estimate is not None and values:
            budget.check_size(estimate(*values))
        if name == "format" and values:
            _check_format(budget, values[0])
        return _check_result(budget, function(*args, **kwargs))

    return guarded


_JINJA_CONTEXTS = (
    jinja2.runtime.Context,
    jinja2.nodes.EvalContext,
    jinja2.Environment,
)


class _BudgetedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, checking the render's budget at every operation it sees.

    Python's own loops are not seen, but a loop's header (its ``range`` call,
    the lookups in its iterable) and its body's output are, so nested loops
    meet a check at least once per inner loop.  Values read back (``ns.text``
    after ``{% set ns.text = ns.text ~ ns.text %}``) are checked for size,
    so doubling a string in a loop stops at the output limit.
    """

    # Operators that can build a huge value from small ones.
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        if budget is None:
            return super().call(context, obj, *args, **kwargs)
        budget.tick()
        # The sandbox's own range has its limit (and error) already.
        if obj is not safe_range:
            _check_arguments(budget, args, kwargs)
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, str):
            name = getattr(obj, "__name__", "")
            if name in ("format", "format_map"):
                _check_format(budget, owner)
            elif name in _ESTIMATES:
                budget.check_size(_ESTIMATES[name](owner, *args))
        return _check_result(budget, super().call(context, obj, *args, **kwargs))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        if budget is not None:
            budget.tick()
            if operator == "*":
                for sequence, count in ((left, right), (right, left)):
                    if isinstance(count, int) and _sized(sequence):
                        budget.check_size(_sized(sequence) * count)
            elif operator == "+":
                budget.check_size(_sized(left) + _sized(right))
            elif operator == "%":
                if isinstance(left, str):
                    _check_format(budget, left)
                    values = right if isinstance(right, tuple) else (right,)
                    _check_arguments(budget, values, {})
            elif isinstance(right, int) and abs(right) > 1024:
                raise _BudgetExceeded(f"the exponent {right} is too large")
        return super().call_binop(context, operator, left, right)

    def getitem(self, obj: Any, argument: Any) -> Any:
        budget = _budget()
        if budget is None:
            return super().getitem(obj, argument)
        budget.tick()
        return _check_result(budget, super().getitem(obj, argument))

    def getattr(self, obj: Any, attribute: str) -> Any:
        budget = _budget()
        if budget is None:
            return super().getattr(obj, attribute)
        budget.tick()
        return _check_result(budget, super().getattr(obj, attribute))


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: Hugging Face marks the
    assistant's tokens with it for training masks; a prompt is its body."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_body")
        return nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _body(self, caller: Callable[[], str]) -> str:
        return caller()


def _raise_exception(message: str) -> NoReturn:
    raise _TemplateRaised(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | list[str] | None = None,
    sort_keys: bool = False,
) -> str:
    """Hugging Face's ``tojson``: ``json.dumps`` with its options, without
    the HTML escaping of Jinja's own filter (a prompt is not a web page)."""
    if isinstance(indent, int) and not isinstance(indent, bool):
        budget = _budget()
        if budget is not None:
            budget.check_size(indent)
    pair = None if separators is None else (str(separators[0]), str(separators[1]))
    return json.dumps(
        value,
        ensure_ascii=ensure_ascii,
        indent=indent,
        separators=pair,
        sort_keys=sort_keys,
    )


def _strftime_now(format: str) -> str:
    """The agent's local time, formatted: templates date their system turn."""
    budget = _budget()
    if budget is not None:
        _check_format(budget, format)
    return datetime.now().strftime(format)


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    # Jinja's default Undefined, as Hugging Face: an unset key is falsy,
    # prints as nothing, and fails only when used as a value it is not.
    environment = _BudgetedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        # Jinja's optimizer runs filters on constants while compiling, out
        # of any render's budget ("a"|center(10**9) would allocate then).
        optimized=False,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    environment.filters["tojson"] = _tojson
    environment.filters = {
        name: _budgeted_filter(name, function)
        for name, function in environment.filters.items()
    }
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    return environment


@lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    # Jinja's compiler evaluates filters of constants ("a"|center(n)) to
    # write them out as text: that runs under a budget too.
    _current.budget = _Budget(RENDER_TIME_LIMIT_S, RENDER_OUTPUT_LIMIT_CHARS)
    try:
        return _environment().from_string(source)
    except _BudgetExceeded as error:
        raise ChatTemplateError(f"template does not compile: {error}") from error
    except jinja2.TemplateError as error:
        raise ChatTemplateError(f"template does not compile: {error}") from error
    except Exception as error:
        raise ChatTemplateError(
            f"template does not compile: {type(error).__name__}: {error}"
        ) from error
    finally:
        _current.budget = None


@dataclass(frozen=True)
class ChatTemplate:
    source: str
    bos_token: str = ""
    eos_token: str = ""

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
        enable_thinking: bool | None = None,
        extra: Mapping[str, Any] | None = None,
        max_chars: int = RENDER_OUTPUT_LIMIT_CHARS,
        time_limit_s: float = RENDER_TIME_LIMIT_S,
    ) -> str:
        """The prompt; ``ChatTemplateError`` for any failure of the template,
        or when it takes longer than ``time_limit_s`` or writes more than
        ``max_chars``.

        ``enable_thinking`` None leaves the variable undefined, as Hugging
        Face does when it is not passed (templates test ``is defined``);
        ``extra`` are a request's ``chat_template_kwargs``.
        """
        template = compile_template(self.source)
        variables: dict[str, Any] = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        if enable_thinking is not None:
            variables["enable_thinking"] = enable_thinking
        for name, value in (extra or {}).items():
            if name in RESERVED_VARIABLES:
                raise ChatTemplateError(
                    f"chat_template_kwargs may not set {name!r}: the request does"
                )
            variables[name] = value
        variables.update(
            messages=template_messages(messages),
            add_generation_prompt=add_generation_prompt,
            tools=tools or None,
            documents=documents or None,
        )
        budget = _Budget(time_limit_s, max_chars)
        _current.budget = budget
        try:
            pieces: list[str] = []
            size = 0
            for piece in template.generate(**variables):
                size += len(piece)
                budget.check_size(size)
                budget.tick()
                pieces.append(piece)
            return "".join(pieces)
        except _TemplateRaised as error:
            raise ChatTemplateError(f"template raised: {error}") from error
        except _BudgetExceeded as error:
            raise ChatTemplateError(f"template stopped: {error}") from error
        except jinja2.TemplateError as error:
            raise ChatTemplateError(f"template failed: {error}") from error
        except Exception as error:
            # Template code is not ours: OverflowError (a huge range),
            # RecursionError, MemoryError, whatever it raises fails this render.
            raise ChatTemplateError(
                f"template failed: {type(error).__name__}: {error}"
            ) from error
        finally:
            _current.budget = None

    def render_segments(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
        enable_thinking: bool | None = None,
        extra: Mapping[str, Any] | None = None,
        max_chars: int = RENDER_OUTPUT_LIMIT_CHARS,
    ) -> list[tuple[str, bool]]:
        """The prompt cut into (text, from_a_message) pieces, in order.

        Text that came from a message's content must be tokenized as text
        (``<end_of_turn>`` typed by a user stays seven characters, not a turn
        boundary); only what the template itself writes may hold special
        tokens.  To find the contents in the rendered prompt, the template is
        rendered a second time with each content's text wrapped in private-use
        marks: where the marked render, marks removed, equals the real one,
        the marks give exact spans.  A template that changes contents in ways
        marks disturb (splitting on a substring, slicing) falls back to
        finding each content, in order, in the real prompt; a content the
        template rewrote beyond recognition is then not found and stays part
        of the template's text (the price of such a template).  Contents
        holding the mark characters themselves skip straight to that search.
        """
        options: dict[str, Any] = {
            "add_generation_prompt": add_generation_prompt,
            "tools": tools,
            "documents": documents,
            "enable_thinking": enable_thinking,
            "extra": extra,
            "max_chars": max_chars,
        }
        plain = self.render(messages, **options)
        contents = [_content_core(message) for message in messages]
        if not any(contents):
            return [(plain, False)]
        if not any(_OPEN in text or _CLOSE in text for text in contents):
            marked_messages = [_marked(message) for message in messages]
            try:
                marked = self.render(
                    marked_messages, **{**options, "max_chars": 2 * max_chars}
                )
            except ChatTemplateError:
                marked = None
            if marked is not None:
                segments = _segments_from_marks(marked)
                if segments is not None and "".join(t for t, _ in segments) == plain:
                    return segments
        return _segments_by_search(plain, contents)


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages as templates read them: a tool call's ``arguments``,
    sent as JSON text by OpenAI clients, as the mapping it encodes (templates
    iterate it, or write it with ``tojson``).  Text that is not a JSON object
    stays text; the caller's messages are not changed."""
    result: list[dict[str, Any]] = []
    for message in messages:
        calls = message.get("tool_calls")
        if isinstance(calls, list) and any(_text_arguments(c) for c in calls):
            result.append({**message, "tool_calls": [_call_mapping(c) for c in calls]})
        else:
            result.append(message)
    return result


def _text_arguments(call: Any) -> bool:
    function = call.get("function") if isinstance(call, dict) else None
    return isinstance(function, dict) and isinstance(function.get("arguments"), str)


def _call_mapping(call: Any) -> Any:
    if not _text_arguments(call):
        return call
    function = call["function"]
    try:
        arguments = json.loads(function["arguments"])
    except ValueError:
        return call
    if not isinstance(arguments, dict):
        return call
    return {**call, "function": {**function, "arguments": arguments}}


def _content_core(message: dict[str, Any]) -> str:
    content = message.get("content")
    return content.strip() if isinstance(content, str) else ""


def _marked(message: dict[str, Any]) -> dict[str, Any]:
    """The message with its content's text (not the whitespace around it,
    which templates often ``trim``) between marks."""
    content = message.get("content")
    if not isinstance(content, str) or not content.strip():
        return message
    core = content.strip()
    start = content.index(core)
    marked = content[:start] + _OPEN + core + _CLOSE + content[start + len(core) :]
    return {**message, "content": marked}


def _segments_from_marks(marked: str) -> list[tuple[str, bool]] | None:
    """Split a marked render into pieces; None if the marks do not pair up."""
    segments: list[tuple[str, bool]] = []
    parts = marked.split(_OPEN)
    if _CLOSE in parts[0]:
        return None
    segments.append((parts[0], False))
    for part in parts[1:]:
        if part.count(_CLOSE) != 1:
            return None
        inner, rest = part.split(_CLOSE)
        segments.append((inner, True))
        segments.append((rest, False))
    return [(text, literal) for text, literal in segments if text]


def _segments_by_search(plain: str, contents: list[str]) -> list[tuple[str, bool]]:
    segments: list[tuple[str, bool]] = []
    cursor = 0
    for content in contents:
        if not content:
            continue
        found = plain.find(content, cursor)
        if found == -1:
            continue
        segments.append((plain[cursor:found], False))
        segments.append((content, True))
        cursor = found + len(content)
    segments.append((plain[cursor:], False))
    return [(text, literal) for text, literal in segments if text]


def message_text(content: Any) -> str:
    """The text of a message's content: a string, or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""
