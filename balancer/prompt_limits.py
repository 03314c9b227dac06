"""Bounds on a prompt's size that hold before it is tokenized.

Framework-free.  Tokenizing is the expensive part of admitting a request, so
the web tier refuses what cannot fit in a slot's context from its characters
and messages alone, before the request takes a slot.
"""

from __future__ import annotations

from balancer.chat_template import message_text
from balancer.contract import RequestParams

# A token is at most this many characters of prompt text in the vocabularies
# we know (the demo model's longest piece is 48 bytes): a prompt longer than
# context_size times this cannot fit in a slot, whatever the model.  The agent
# knows its vocabulary and applies the exact figure.
CHARS_PER_TOKEN_BOUND = 64


class PromptTooLarge(ValueError):
    """The prompt cannot fit in a slot's context; answered with 413."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def check_prompt_bounds(params: RequestParams, *, context_size: int) -> None:
    """Refuse a prompt that cannot fit in ``context_size`` tokens, untokenized.

    Tokenizing is the expensive part (llama.cpp's tokenizer is slow on text
    full of special-token strings), so this bounds what may be tokenized:
    every message adds at least one token, every token covers at most
    ``CHARS_PER_TOKEN_BOUND`` characters.
    """
    max_chars = context_size * CHARS_PER_TOKEN_BOUND
    if "raw_prompt" in params:
        size = len(params["raw_prompt"])
        if size > max_chars:
            raise PromptTooLarge(
                "raw_prompt",
                f"is {size} characters; a slot's context of {context_size} tokens "
                f"holds at most {max_chars}",
            )
        return
    if "conversation_history" not in params:
        return  # embeddings: each document is bounded on the agent
    history = params["conversation_history"]
    if len(history) > context_size:
        raise PromptTooLarge(
            "conversation_history",
            f"has {len(history)} messages; a slot's context of {context_size} "
            f"tokens holds at most {context_size}",
        )
    size = sum(len(message_text(m.get("content", ""))) for m in history)
    if size > max_chars:
        raise PromptTooLarge(
            "conversation_history",
            f"is {size} characters; a slot's context of {context_size} tokens "
            f"holds at most {max_chars}",
        )
