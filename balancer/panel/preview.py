"""Chat-template preview: a template rendered against a sample conversation."""

from __future__ import annotations

from typing import Any

from balancer.chat_template import ChatTemplate

SAMPLE_CONVERSATION: list[dict[str, Any]] = [
    {"role": "user", "content": "Hello! Who are you?"},
    {"role": "assistant", "content": "I am an assistant. How can I help?"},
    {"role": "user", "content": "What is the capital of France?"},
]


def sample_conversation(system_prompt: str) -> list[dict[str, Any]]:
    """The sample, opened by the default system prompt as an agent would."""
    if not system_prompt:
        return list(SAMPLE_CONVERSATION)
    return [{"role": "system", "content": system_prompt}, *SAMPLE_CONVERSATION]


def render_preview(source: str, *, system_prompt: str = "") -> str:
    """The prompt an agent would build; ``ChatTemplateError`` if it cannot.

    The special tokens are written as text here; agents use the model's own.
    """
    template = ChatTemplate(source, bos_token="<bos>", eos_token="<eos>")
    return template.render(
        sample_conversation(system_prompt), add_generation_prompt=True
    )
