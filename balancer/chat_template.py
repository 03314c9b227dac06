"""Chat-template rendering in a Jinja sandbox.

A template is user input (it comes from a GGUF file or from an operator), so it
runs in Jinja's ``ImmutableSandboxedEnvironment``: no attribute starting with an
underscore, no mutation of the objects it is given, no access to Python
internals.  The dialect is Hugging Face's ``apply_chat_template``: ``messages``,
``add_generation_prompt``, ``bos_token``, ``eos_token``, ``raise_exception`` and
the ``tojson`` filter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

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


def _raise_exception(message: str) -> NoReturn:
    raise _TemplateRaised(message)


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    environment = ImmutableSandboxedEnvironment(
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
    ) -> str:
        template = compile_template(self.source)
        try:
            return template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                tools=tools or None,
                enable_thinking=enable_thinking,
            )
        except _TemplateRaised as error:
            raise ChatTemplateError(f"template raised: {error}") from error
        except jinja2.TemplateError as error:
            raise ChatTemplateError(f"template failed: {error}") from error
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as error:
            raise ChatTemplateError(f"template failed: {error}") from error


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
