"""Chat-template rendering in a Jinja sandbox.

A template is user input (it comes from a GGUF file or from an operator), so it
runs in Jinja's ``ImmutableSandboxedEnvironment``: no attribute starting with an
underscore, no mutation of the objects it is given, no access to Python
internals.  The dialect is Hugging Face's ``apply_chat_template``: ``messages``,
``add_generation_prompt``, ``bos_token``, ``eos_token``, ``raise_exception`` and
the ``tojson`` filter.

A render has a budget: a time limit, checked at every call, operator, item
and attribute lookup the template makes and at every piece of output, and an
output-size limit.  Any exception a template raises (the sandbox's own
``OverflowError`` for a huge ``range`` included) is a ``ChatTemplateError``:
a template is code we did not write, and it must fail the one request, never
the thread rendering it.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

# How long one render may take, and how much text it may produce by default.
RENDER_TIME_LIMIT_S = 2.0
RENDER_OUTPUT_LIMIT_CHARS = 8 * 1024 * 1024
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
    return len(value) if isinstance(value, (str, list, tuple)) else 0


class _BudgetedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, checking the render's budget at every operation it sees.

    Python's own loops are not seen, but a loop's header (its ``range`` call,
    the lookups in its iterable) and its body's output are, so nested loops
    meet a check at least once per inner loop.
    """

    # Operators that can build a huge value from small ones.
    intercepted_binops = frozenset({"*", "**", "+"})

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        if budget is not None:
            budget.tick()
        return super().call(context, obj, *args, **kwargs)

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
            elif isinstance(right, int) and abs(right) > 1024:
                raise _BudgetExceeded(f"the exponent {right} is too large")
        return super().call_binop(context, operator, left, right)

    def getitem(self, obj: Any, argument: Any) -> Any:
        budget = _budget()
        if budget is not None:
            budget.tick()
        return super().getitem(obj, argument)

    def getattr(self, obj: Any, attribute: str) -> Any:
        budget = _budget()
        if budget is not None:
            budget.tick()
        return super().getattr(obj, attribute)


def _raise_exception(message: str) -> NoReturn:
    raise _TemplateRaised(message)


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    environment = _BudgetedEnvironment(
        trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined
    )
    environment.globals["raise_exception"] = _raise_exception
    environment.filters["tojson"] = _tojson
    return environment


@lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    try:
        return _environment().from_string(source)
    except jinja2.TemplateError as error:
        raise ChatTemplateError(f"template does not compile: {error}") from error


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
        enable_thinking: bool = False,
        max_chars: int = RENDER_OUTPUT_LIMIT_CHARS,
        time_limit_s: float = RENDER_TIME_LIMIT_S,
    ) -> str:
        """The prompt; ``ChatTemplateError`` for any failure of the template,
        or when it takes longer than ``time_limit_s`` or writes more than
        ``max_chars``."""
        template = compile_template(self.source)
        budget = _Budget(time_limit_s, max_chars)
        _current.budget = budget
        try:
            pieces: list[str] = []
            size = 0
            for piece in template.generate(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                tools=tools or None,
                enable_thinking=enable_thinking,
            ):
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
        enable_thinking: bool = False,
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
            "enable_thinking": enable_thinking,
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
