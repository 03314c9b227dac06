"""``chat_template_kwargs`` (llama-server's extension of chat completions)
travel from the OpenAI request to the agent's template render."""

from __future__ import annotations

from typing import Any

import pytest

from agents.jobs import Generation
from agents.messages import job_from_request
from agents.prompting import prompt_tokens
from balancer.chat_template import ChatTemplate
from balancer.events import InferenceRequestEvent
from inference.openai.errors import OpenAIError
from inference.openai.requests import parse_chat_request

TEMPLATE = ChatTemplate(
    "{% for d in documents or [] %}[{{ d.title }}]{% endfor %}"
    "effort={{ reasoning_effort }};thinking={{ enable_thinking }};"
    "{{ messages[0].content }}"
)


class _Characters:
    """A tokenizer whose tokens are the prompt's characters."""

    def tokenize(
        self, text: str, *, add_special: bool, parse_special: bool = True
    ) -> list[int]:
        return [ord(c) for c in text]

    def tokenize_segments(self, segments: list[tuple[str, bool]]) -> list[int]:
        return [ord(c) for text, _ in segments for c in text]


def _rendered(body: dict[str, Any]) -> str:
    request = parse_chat_request(body)
    event: InferenceRequestEvent = {
        "type": "inference.request",
        "request_id": "r",
        "reply_to": "inbox",
        "kind": "conversation",
        "params": request.params,
    }
    job = job_from_request(event, system_prompt="")
    assert isinstance(job, Generation)
    tokens = prompt_tokens(
        job,
        template=TEMPLATE,
        tokenizer=_Characters(),
        context_per_slot=4096,
        char_limit=100_000,
    )
    return "".join(chr(t) for t in tokens)


def _body(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "Hi"}], **extra}


def test_chat_template_kwargs_reach_the_template() -> None:
    text = _rendered(
        _body(
            chat_template_kwargs={
                "reasoning_effort": "high",
                "enable_thinking": True,
                "documents": [{"title": "A"}, {"title": "B"}],
            }
        )
    )
    assert text == "[A][B]effort=high;thinking=True;Hi"


def test_without_chat_template_kwargs_thinking_is_off() -> None:
    assert _rendered(_body()) == "effort=;thinking=False;Hi"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ([], "chat_template_kwargs"),
        ({"messages": []}, "chat_template_kwargs.messages"),
        (
            {"add_generation_prompt": False},
            "chat_template_kwargs.add_generation_prompt",
        ),
        ({"tools": []}, "chat_template_kwargs.tools"),
        ({"enable_thinking": "yes"}, "chat_template_kwargs.enable_thinking"),
        ({"documents": "x"}, "chat_template_kwargs.documents"),
        ({"not a name": 1}, "chat_template_kwargs.not a name"),
    ],
)
def test_bad_chat_template_kwargs_are_refused_naming_the_field(
    kwargs: Any, field: str
) -> None:
    with pytest.raises(OpenAIError) as raised:
        parse_chat_request(_body(chat_template_kwargs=kwargs))
    assert raised.value.status == 400
    assert raised.value.param == field
